#!/usr/bin/env bash
# THE install steps of Swapyard, shared by scripts/test.sh (and so CI), scripts/serve.sh and the Dockerfile,
# so that the image is built exactly the way CI installs what it tests.
#
#   bash scripts/install.sh [--venv DIR] [--torch cpu|cuda] [--extras LIST] [--only torch|deps]
#
# 1. a virtual environment in DIR (default .venv) unless one is there;
# 2. torch, unless one is already importable (a CUDA build installed by hand is kept): the CPU build by
#    default, the CUDA build (PyPI's default wheel) with --torch cuda. SWAPYARD_TORCH_INDEX_URL points the
#    torch step at another index (the Dockerfile's CPU variant uses PyTorch's CPU index);
# 3. `pip install -e .[LIST]` (LIST: comma-separated extras such as test,ray; empty = none).
# --only torch stops after step 2; --only deps installs, after it, only the dependencies pyproject.toml lists
# for LIST, not Swapyard itself: the Dockerfile's layers, so that a change to pyproject.toml reuses torch's
# layer and a change to the code reuses both.
# Every option also reads from the environment: SWAPYARD_VENV, SWAPYARD_TORCH, SWAPYARD_EXTRAS,
# SWAPYARD_TORCH_VERSION, PYTHON (the interpreter that makes the venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SWAPYARD_VENV:-.venv}"
TORCH="${SWAPYARD_TORCH:-cpu}"
EXTRAS="${SWAPYARD_EXTRAS:-}"
PY="${PYTHON:-python3}"
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) VENV="$2"; shift 2 ;;
    --torch) TORCH="$2"; shift 2 ;;
    --extras) EXTRAS="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    *) echo "install.sh: unknown argument $1 (see the header of scripts/install.sh)" >&2; exit 2 ;;
  esac
done
case "$TORCH" in cpu | cuda) ;; *) echo "install.sh: --torch must be cpu or cuda, got '$TORCH'" >&2; exit 2 ;; esac
case "$ONLY" in "" | torch | deps) ;; *) echo "install.sh: --only must be torch or deps, got '$ONLY'" >&2; exit 2 ;; esac

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)

# torch first, so that nothing later pulls the multi-GB CUDA wheels onto a CPU machine. On our CI image
# torch==2.13.0 resolves to the CPU build on local disk; elsewhere set SWAPYARD_TORCH_INDEX_URL (e.g.
# https://download.pytorch.org/whl/cpu) for the CPU build. On PyPI the plain wheel is the CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  TORCH_SPEC="torch==${SWAPYARD_TORCH_VERSION:-2.13.0}"
  if [ -n "${SWAPYARD_TORCH_INDEX_URL:-}" ]; then
    "${PIP[@]}" --index-url "$SWAPYARD_TORCH_INDEX_URL" "$TORCH_SPEC"
  else
    "${PIP[@]}" "$TORCH_SPEC"
  fi
  # The build must be the one asked for: a CPU image with CUDA wheels (or the reverse) fails here, at build.
  "$VENV/bin/python" -W ignore::UserWarning - "$TORCH" <<'PY'
import sys
import torch

want, cuda = sys.argv[1], torch.version.cuda
if (want == "cuda") != (cuda is not None):
    sys.exit(f"install.sh: asked for the {want} build of torch, got torch {torch.__version__} (CUDA {cuda})")
print(f"install.sh: torch {torch.__version__} ({want} build)")
PY
fi

[ "$ONLY" != torch ] || exit 0
if [ "$ONLY" = deps ]; then
  REQUIREMENTS="$(mktemp)"
  trap 'rm -f "$REQUIREMENTS"' EXIT
  # [project] dependencies plus those of each extra; an extra naming swapyard[...] expands to its extras.
  "$VENV/bin/python" - "$EXTRAS" >"$REQUIREMENTS" <<'PY'
import re
import sys
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
todo, seen, reqs = [e for e in sys.argv[1].split(",") if e], set(), list(project["dependencies"])
while todo:
    extra = todo.pop()
    if extra in seen:
        continue
    seen.add(extra)
    for req in project["optional-dependencies"][extra]:
        own = re.fullmatch(r"\s*swapyard\[([^\]]+)\]\s*", req)
        if own:
            todo += own[1].split(",")
        else:
            reqs.append(req)
print("\n".join(reqs))
PY
  "${PIP[@]}" -r "$REQUIREMENTS"
  exit 0
fi

TARGET="."
[ -z "$EXTRAS" ] || TARGET=".[$EXTRAS]"
"${PIP[@]}" -e "$TARGET"
