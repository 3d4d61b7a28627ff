#!/usr/bin/env bash
# The GPU checks of issues 6 and 7 in one device call (~8 minutes on one H200; see BENCHMARKS.md):
# rows bit-identical across batch sizes on the GPU (default flex step, its compiled-layers variant,
# eager), contrastive-decoding throughput of GOOD + a same-shaped EARLY-k amateur (default step vs
# compiled layers vs eager, the paper's 400 new tokens and 128 at a large batch), the ratio line
# against HF generate and the paper-style loop, and training MFU of GOOD.
# Run from the repo root on a CUDA machine whose python3 has torch + transformers; logs go to $OUT.
set -u
OUT=${OUT:-/tmp/cdray-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
D="$PY bench/decoding.py --device cuda --preset good --dtype bf16 --repeats 1 --threads 8"
R="$PY bench/row_determinism.py --device cuda --dtype bf16"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } 2>&1 | tee "$OUT/env.txt"
timeout 100 $R --quick 2>&1 | tee "$OUT/row_determinism.txt"
timeout 100 $R --quick --compile-layers 2>&1 | tee "$OUT/row_determinism_compiled.txt"
timeout 40 $R --attention eager 2>&1 | tee "$OUT/row_determinism_eager.txt"
timeout 150 $D --skip-baselines --new 400 --sweep-batches 1536 --attention auto,flex:compiled,eager 2>&1 | tee "$OUT/decoding_400.txt"
timeout 90 $D --skip-baselines --new 400 --sweep-batches 2560 2>&1 | tee "$OUT/decoding_400_2560.txt"
timeout 60 $D --skip-baselines --new 128 --sweep-batches 4608 2>&1 | tee "$OUT/decoding_128.txt"
timeout 120 $D --batch 768 --new 256 2>&1 | tee "$OUT/decoding_ratio.txt"
timeout 100 $PY bench/mfu.py --steps 20 --batch 64 2>&1 | grep -v "Writing model" | tee "$OUT/mfu_b64.txt"
grep -h "cd_best_tok_s\|rows_identical\|cd_vs_single\|attention \|cdray batch\|mfu=" "$OUT"/*.txt
