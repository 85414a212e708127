#!/usr/bin/env bash
# The README's test command: make a virtual environment, install Swapyard with its test
# dependencies (scripts/install.sh: CPU torch unless one is already installed), lint, type-check and run
# the suite. The Dockerfile installs through the same script, so the image is what this tests.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SWAPYARD_VENV:-.venv}"
# On a GPU machine install the CUDA build first (`pip install torch`); install.sh then leaves it alone.
bash scripts/install.sh --venv "$VENV" --extras test
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
"$VENV/bin/lint-imports" --no-cache  # the layering of ../shared/DESIGN.md (.importlinter)
export TRITON_INTERPRET="${TRITON_INTERPRET:-1}"
export HF_HUB_OFFLINE=1
exec "$VENV/bin/python" -m pytest -n "${SWAPYARD_TEST_WORKERS:-2}" "$@"
