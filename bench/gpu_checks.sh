#!/usr/bin/env bash
# The GPU checks of issues 6 and 7 in one device call (~5 minutes; see BENCHMARKS.md):
# the decode-attention kernel alone (launch shapes incl. the vector-unit variant, bf16 vs fp8
# cache, vs FlexAttention, as a fraction of copy bandwidth) and the triton step against the eager
# step; contrastive-decoding throughput of GOOD + a same-shaped EARLY-k amateur at the paper's 400
# new tokens with side-by-side A/Bs (fp8 cache with the engine's default launch shape, the grid's
# best and the old mma default; bf16 cache; the engine waiting for each step's tokens before
# queuing the next, :noahead; the step widening logits to fp32, :float32logits); larger
# batches (3072, 3584: ~56 and ~65 GiB) with the host's waits counted; rows bit-identical across
# batch sizes for the triton step with an fp8 cache and the default launch shape (GOOD-shaped at
# batches 1536, 768 and 1152, and a tiny pair down to batch 5; each also as two requests sharing one batch, as an actor runs
# two shards: CUDA graphs recaptured as the batch shrinks and grows back);
# a kernel profile. FULL=1 adds the ratio line against HF generate and the paper-style loop and
# the training MFU of GOOD (both recorded before; ~4 more minutes).
# Run from the repo root on a CUDA machine whose python3 has torch + transformers; logs go to $OUT.
set -u
OUT=${OUT:-/tmp/cdray-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
D="$PY bench/decoding.py --device cuda --preset good --dtype bf16 --repeats 1 --threads 8"
R="$PY bench/row_determinism.py --device cuda --dtype bf16 --quick --attention triton"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"; } 2>&1 | tee "$OUT/env.txt"
timeout 100 $PY bench/decode_attention.py 2>&1 | tee "$OUT/decode_attention.txt"
# the fastest launch shape for each cache (bf16's need not be fp8's)
CFG=$(grep -o 'best_config=[0-9a-z,]*' "$OUT/decode_attention.txt" | cut -d= -f2 | tr , .)
CFG16=$(grep -o 'best bf16: [0-9a-z,]*' "$OUT/decode_attention.txt" | cut -d' ' -f3 | tr , .)
T="triton:cfg=${CFG:-64.4.3}"
T16="triton:cfg=${CFG16:-64.4.3}"
# triton:fp8 is the engine's default (cdray.decode.attention.default_config)
timeout 240 $D --skip-baselines --new 400 --sweep-batches 1536 --attention "triton:fp8,$T:fp8,triton:cfg=64.4.3:fp8,triton:fp8:noahead,triton:fp8:float32logits,$T16" 2>&1 | tee "$OUT/decoding_400.txt"
timeout 120 $D --skip-baselines --new 400 --sweep-batches 3072,3584 --count-syncs --attention triton:fp8 2>&1 | tee "$OUT/decoding_400_3072.txt"
timeout 90 $R --kv-cache fp8 --good 1536 2>&1 | tee "$OUT/row_determinism_fp8_good.txt"
timeout 60 $R --kv-cache fp8 2>&1 | tee "$OUT/row_determinism_fp8.txt"
timeout 40 $D --skip-baselines --profile 1536 --profile-attention triton:fp8 2>&1 | tee "$OUT/profile_fp8.txt"
if [ "${FULL:-0}" = 1 ]; then
  timeout 120 $D --batch 768 --new 256 2>&1 | tee "$OUT/decoding_ratio.txt"
  timeout 100 $PY bench/mfu.py --steps 20 --batch 64 2>&1 | grep -v "Writing model" | tee "$OUT/mfu_b64.txt"
fi
grep -h "terminate\|one_row_bits\|rows differing\|cd_vs_single\|mfu=\|best \|best_config\|step_check\|cd_best_tok_s\|rows_identical\|attention \|cdray batch\|vs_copy=" "$OUT"/*.txt | head -100
