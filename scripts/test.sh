#!/usr/bin/env bash
# The README's test command: make a virtual environment, install Swapyard with its test
# dependencies (CPU torch unless one is already installed), lint, type-check and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SWAPYARD_VENV:-.venv}"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# CPU machines: torch==2.13.0 is the CPU build (from local disk on our CI image). On a GPU machine
# install the CUDA build first (`pip install torch`); this line then leaves it alone.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "torch==${SWAPYARD_TORCH_VERSION:-2.13.0}"
fi
"$VENV/bin/python" -m pip install -q -e ".[test]"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
export TRITON_INTERPRET="${TRITON_INTERPRET:-1}"
export HF_HUB_OFFLINE=1
exec "$VENV/bin/python" -m pytest -n "${SWAPYARD_TEST_WORKERS:-2}" "$@"
