#!/usr/bin/env bash
# The README's run command: make/use the virtual environment, install Swapyard (scripts/install.sh: CPU torch
# unless one is already installed), then `swapyard serve`. Without arguments it serves the embedded demo,
# built offline on first run (~1-2 minutes on a 2-core CPU, cached in ~/.cache/swapyard). Arguments go to
# `swapyard serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SWAPYARD_VENV:-.venv}"
# Skip the install when Swapyard is already importable from this checkout (a second start is instant).
if ! "$VENV/bin/python" -c "import torch, swapyard.cli, server, demo, fastapi, uvicorn" 2>/dev/null || [ ! -x "$VENV/bin/swapyard" ]; then
  bash scripts/install.sh --venv "$VENV"
fi
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
exec "$VENV/bin/swapyard" serve "$@"
