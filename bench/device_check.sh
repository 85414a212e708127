#!/usr/bin/env bash
# The device check (issue 18): compiled-kernel tests, the kernel table against copy bandwidth, a decode-step
# breakdown at Llama-3-8B geometry, S-LoRA's serving setting against base-only, CUDA graph against eager.
#
#   bash bench/device_check.sh RESULTS_DIR [--smoke-cpu] [--only kernels,decode]
#
# Runs with the system python (or $PYTHON): no .venv, no network, nothing installed; sections whose
# dependencies are missing say so and are skipped. Everything lands in RESULTS_DIR, the summary in
# RESULTS_DIR/<card>.md. About 9 minutes on an H100/H200; --smoke-cpu runs it on the CPU with tiny shapes.
# What each section measures: bench/README.md, "Device check".
set -euo pipefail
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: bash bench/device_check.sh RESULTS_DIR [--smoke-cpu] [--only SECTION,...]" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
cd "$ROOT"
exec "$PY" -m bench.device "$@"
