"""The kernel half of the device check: the GPU tests and the kernel table, without the model sections.

    python bench/gpu_check.py [RESULTS_DIR] [--smoke-cpu]          (or: make gpu-check)

Runs the sections `env`, `tests` and `kernels` of bench/device (what each measures: bench/device/kernels.py
and bench/README.md, "Device check") and writes RESULTS_DIR/<card>.md (default bench/results/device).
`bash bench/device_check.sh RESULTS_DIR` runs every section; this is the shorter run for kernel work.
Without CUDA the env section fails and says so; `--smoke-cpu` checks the script on the CPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench.device.__main__ import main as device_check

    flags = [a for a in argv if a.startswith("-")]
    dirs = [a for a in argv if not a.startswith("-")]
    out = dirs[0] if dirs else str(ROOT / "bench" / "results" / "device")
    return device_check([out, *flags, "--only", "env,tests,kernels"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
