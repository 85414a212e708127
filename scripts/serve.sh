#!/usr/bin/env bash
# The README's run command: make/use the virtual environment, install Swapyard (CPU torch unless one is
# already installed), then `swapyard serve`. Without arguments it serves the embedded demo, built offline on
# first run (~1-2 minutes on a 2-core CPU, cached in ~/.cache/swapyard). Arguments go to `swapyard serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SWAPYARD_VENV:-.venv}"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "torch==${SWAPYARD_TORCH_VERSION:-2.13.0}"
fi
# Skip the install when Swapyard is already importable from this checkout (a second start is instant).
if ! "$VENV/bin/python" -c "import server, fastapi, uvicorn" 2>/dev/null || [ ! -x "$VENV/bin/swapyard" ]; then
  "$VENV/bin/python" -m pip install -q -e .
fi
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
exec "$VENV/bin/swapyard" serve "$@"
