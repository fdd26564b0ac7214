#!/usr/bin/env bash
# segdemo's GPU checks in one go, printed as one table: segment() vs the pipeline on CUDA
# for the three tasks, the inference benchmark at 1024x768 and 12 MP, 50 training steps
# in fp32 and bf16, and the metric counted on the device. See bench/gpu_check.py.
#
#   bash bench/gpu_check.sh                    # on a CUDA machine, full settings (~3 min)
#   GPU_CHECK_TINY=1 bash bench/gpu_check.sh   # tiny settings on any machine (CPU rows)
#   bash bench/gpu_check.sh --only parity metric --json gpu_check.json
#
# Offline: every model is built from a config here; nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/# /'
else
    echo "# no nvidia-smi: CUDA-only rows are skipped, the others run on the CPU"
fi
exec python bench/gpu_check.py "$@"
