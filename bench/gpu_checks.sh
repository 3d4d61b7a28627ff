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
# `bash bench/gpu_checks.sh --quick` (any machine, ~1.5 minutes on 2 CPU cores; tests/test_bench.py)
# runs the same commands on the CPU, Triton's kernels through its interpreter (TRITON_INTERPRET=1),
# with tiny shapes (a 2x64 pair, vocab 64, batches of 2-3 rows, 2 new tokens; 6 rows of 2 tokens
# for the row check): it checks that every command and flag still runs, not any GPU figure. It
# leaves out the GOOD-shaped row check (a 162M pair), nvidia-smi, the kernel profile's GPU table
# and FULL=1's MFU (bench/mfu.py --quick covers its code path).
set -u -o pipefail
FAILED=0  # commands that failed or timed out: the script's exit status
QUICK=0
if [ "${1:-}" = --quick ]; then QUICK=1; fi
OUT=${OUT:-/tmp/cdray-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ $QUICK = 1 ]; then
  export TRITON_INTERPRET=1
  PY=${PY:-.venv/bin/python}
  D="$PY bench/decoding.py --quick --vocab 64 --dtype bf16 --repeats 1 --threads 2"
  R="$PY bench/row_determinism.py --dtype bf16 --quick --attention triton --rows 6 --new 2"
  A="$PY bench/decode_attention.py --quick"
  NEW=2 B1=2 B2=2,3 BP=2 GOOD=""
  S=3  # the interpreter on a shared CPU: the time limits below, times 3
else
  PY=${PY:-python3}
  D="$PY bench/decoding.py --device cuda --preset good --dtype bf16 --repeats 1 --threads 8"
  R="$PY bench/row_determinism.py --device cuda --dtype bf16 --quick --attention triton"
  A="$PY bench/decode_attention.py"
  NEW=400 B1=1536 B2=3072,3584 BP=1536 GOOD=1536
  S=1
fi
{ if [ $QUICK = 0 ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
  $PY -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"; } 2>&1 | tee "$OUT/env.txt"
timeout $((100 * S)) $A 2>&1 | tee "$OUT/decode_attention.txt" || FAILED=$((FAILED + 1))
# the fastest launch shape for each cache (bf16's need not be fp8's)
CFG=$(grep -o 'best_config=[0-9a-z,]*' "$OUT/decode_attention.txt" | cut -d= -f2 | tr , .)
CFG16=$(grep -o 'best bf16: [0-9a-z,]*' "$OUT/decode_attention.txt" | cut -d' ' -f3 | tr , .)
T="triton:cfg=${CFG:-64.4.3}"
T16="triton:cfg=${CFG16:-64.4.3}"
# triton:fp8 is the engine's default (cdray.decode.attention.default_config)
timeout $((240 * S)) $D --skip-baselines --new $NEW --sweep-batches $B1 --attention "triton:fp8,$T:fp8,triton:cfg=64.4.3:fp8,triton:fp8:noahead,triton:fp8:float32logits,$T16" 2>&1 | tee "$OUT/decoding_400.txt" || FAILED=$((FAILED + 1))
timeout $((120 * S)) $D --skip-baselines --new $NEW --sweep-batches $B2 --count-syncs --attention triton:fp8 2>&1 | tee "$OUT/decoding_400_3072.txt" || FAILED=$((FAILED + 1))
if [ -n "$GOOD" ]; then
  timeout $((90 * S)) $R --kv-cache fp8 --good $GOOD 2>&1 | tee "$OUT/row_determinism_fp8_good.txt" || FAILED=$((FAILED + 1))
fi
timeout $((60 * S)) $R --kv-cache fp8 2>&1 | tee "$OUT/row_determinism_fp8.txt" || FAILED=$((FAILED + 1))
timeout $((40 * S)) $D --skip-baselines --new $NEW --profile $BP --profile-attention triton:fp8 2>&1 | tee "$OUT/profile_fp8.txt" || FAILED=$((FAILED + 1))
if [ "${FULL:-0}" = 1 ]; then
  timeout $((120 * S)) $D --batch 768 --new 256 2>&1 | tee "$OUT/decoding_ratio.txt" || FAILED=$((FAILED + 1))
  if [ $QUICK = 0 ]; then
    timeout $((100 * S)) $PY bench/mfu.py --steps 20 --batch 64 2>&1 | grep -v "Writing model" | tee "$OUT/mfu_b64.txt" || FAILED=$((FAILED + 1))
  fi
fi
grep -h "terminate\|one_row_bits\|rows differing\|cd_vs_single\|mfu=\|best \|best_config\|step_check\|cd_best_tok_s\|rows_identical\|attention \|cdray batch\|vs_copy=" "$OUT"/*.txt | head -100
if [ $FAILED -gt 0 ]; then echo "gpu_checks: $FAILED command(s) failed or timed out"; fi
exit $FAILED
