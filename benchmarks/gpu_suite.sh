#!/usr/bin/env bash
# GPU measurements for one CUDA device, a few minutes in all (run from the repository root, after
# `make setup` with a CUDA build of torch):
#   1. optimizer step time on 1e9 fp32 parameters (64 matrices of ~3950x3950) against torch's fused AdamW,
#      every lmopt optimizer and the pytorch_optimizer / torch counterparts (benchmarks.optim_step);
#   2. the ZO-SGD step against one forward pass on SmolLM2-135M, for each direction kind, with peak GPU
#      memory (benchmarks.zo_memory).
# Results: runs/gpu/optim_step.json, runs/gpu/zo_memory.json; each part is bounded by `timeout`.
set -euo pipefail
OUT="${1:-runs/gpu}"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$OUT"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt" || true
timeout 420 "$PY" -m benchmarks.optim_step --device cuda --params 1e9 --mats 64 --steps 9 --slow-steps 2 \
    --out "$OUT" | tail -1
timeout 240 "$PY" -m benchmarks.zo_memory --device cuda --seeds 5 --out "$OUT" | tail -1
