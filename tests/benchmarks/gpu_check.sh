#!/usr/bin/env bash
# GPU check, under 5 minutes, for a machine with a CUDA GPU (not part of `make test`):
# rayops trains on the GPU with bf16 autocast (1 and, if present, 2 GPUs), next to a plain
# PyTorch loop on the same GPU; prints samples/s, GPU utilization and peak GPU memory.
#   tests/benchmarks/gpu_check.sh            # uses .venv/bin/python, else python3
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: not a CUDA machine"; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec "$PY" tests/benchmarks/gpu_check.py "$@"
