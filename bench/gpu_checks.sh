#!/usr/bin/env bash
# The GPU checks of issues 6 and 7 in one device call (see BENCHMARKS.md): training MFU of the
# GOOD model and contrastive-decoding throughput of GOOD + a same-shaped EARLY-k amateur.
# Run from the repo root on a CUDA machine whose python3 has torch + transformers; logs go to $OUT.
set -u
OUT=${OUT:-/tmp/cdray-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } 2>&1 | tee "$OUT/env.txt"
timeout ${DECODE_S:-220} $PY bench/decoding.py --device cuda --preset good --dtype bf16 --batch 256 \
  --new 400 --repeats 1 --threads 8 --sweep-batches 512,1024,1536 2>&1 | tee "$OUT/decoding.txt"
timeout ${MFU_S:-200} $PY bench/mfu.py --steps 40 2>&1 | tee "$OUT/mfu_compile.txt"
timeout ${MFU_NC_S:-90} $PY bench/mfu.py --steps 20 --no-compile 2>&1 | tee "$OUT/mfu_eager.txt"
