#!/usr/bin/env bash
# The flex decode step (cdray.stacked_fast) against the eager step on one GPU, in one device call
# (~6 minutes; most important first): throughput of GOOD + a same-shaped EARLY-k amateur at the
# paper's 400 new tokens, the flex step's row determinism, a larger batch, and 128 new tokens at a
# batch past the kernel grid's limit (one attention call per model).
# Run from the repo root on a CUDA machine whose python3 has torch + transformers; logs go to $OUT.
set -u
OUT=${OUT:-/tmp/cdray-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
D="$PY bench/decoding.py --device cuda --preset good --dtype bf16 --repeats 1 --threads 8"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } 2>&1 | tee "$OUT/env.txt"
timeout 100 $PY bench/row_determinism.py --device cuda --dtype bf16 --attention flex --quick --no-compile-layers 2>&1 | tee "$OUT/row_determinism_flex_nocompile.txt"
timeout 70 $D --skip-baselines --new 400 --sweep-batches 1536 --attention flex:nocompile 2>&1 | tee "$OUT/decoding_400_nocompile.txt"
grep -h "cd_best_tok_s\|rows_identical\|rows differing\|attention \|cdray batch\|Error" "$OUT"/*.txt
