#!/usr/bin/env bash
# The GPU checks of issues 6 and 7 in one device call (~5 minutes on one H100; see BENCHMARKS.md):
# rows bit-identical across batch sizes on the GPU, contrastive-decoding throughput of GOOD + a
# same-shaped EARLY-k amateur, and training MFU of GOOD.
# Run from the repo root on a CUDA machine whose python3 has torch + transformers; logs go to $OUT.
set -u
OUT=${OUT:-/tmp/cdray-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
D="$PY bench/decoding.py --device cuda --preset good --dtype bf16 --repeats 1 --threads 8"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } 2>&1 | tee "$OUT/env.txt"
timeout 60 $PY bench/row_determinism.py --device cuda 2>&1 | tee "$OUT/row_determinism.txt"
timeout 140 $D --batch 768 --new 256 2>&1 | tee "$OUT/decoding_ratio.txt"
timeout 100 $D --skip-baselines --new 400 --sweep-batches 1536 --attention auto,sdpa 2>&1 | tee "$OUT/decoding_400.txt"
timeout 80 $D --skip-baselines --new 128 --sweep-batches 3072,4608 2>&1 | tee "$OUT/decoding_128.txt"
timeout 100 $PY bench/mfu.py --steps 20 --batch 64 2>&1 | grep -v "Writing model" | tee "$OUT/mfu_b64.txt"
timeout 90 $PY bench/mfu.py --steps 30 --batch 16 2>&1 | grep -v "Writing model" | tee "$OUT/mfu_b16.txt"
