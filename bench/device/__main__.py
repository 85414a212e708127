"""The device check's driver: `python -m bench.device RESULTS_DIR [--smoke-cpu] [--only a,b]` (what
bench/device_check.sh runs).

On a GPU every section runs in its own process group with its own time limit (`SECTIONS`, 530 s together:
the 9-minute budget less start-up), its output in `RESULTS_DIR/<section>.log`; a section that crashes or
runs out of time is reported as such and the next one runs. `--smoke-cpu` runs the same sections in this
process (one torch import instead of six) on tiny CPU shapes. Then report.py writes `RESULTS_DIR/<card>.md`.
Exit status 0 when every section is ok or skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from bench.device import report
from bench.device.common import Section

# section -> seconds it may take on the GPU machine
SECTIONS = {"env": 25, "tests": 120, "kernels": 130, "decode": 80, "serving": 125, "graphs": 50}


def run_child(name: str, out: Path, limit: float) -> str:
    """Run one section in a new process group; '' when it exited 0, else what happened."""
    cmd = [sys.executable, "-m", f"bench.device.{name}", "--out", str(out)]
    env = {**os.environ, "SWAPYARD_SECTION_BUDGET_S": str(int(limit))}
    with (out / f"{name}.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the section and anything it started (pytest)
            proc.wait()
            return f"timed out after {limit:.0f} s"
    return "" if code == 0 else f"failed (exit {code})"


def run_inline(name: str, out: Path) -> str:
    """The smoke run: the section's main() in this process, its output captured into its log."""
    buffer = io.StringIO()
    outcome = ""
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            importlib.import_module(f"bench.device.{name}").main(["--out", str(out), "--smoke-cpu"])
        except SystemExit as exc:
            if exc.code not in (None, 0):
                outcome = f"failed ({exc.code})"
                print(exc.code)
        except Exception:
            traceback.print_exc()
            outcome = "failed (exception)"
    (out / f"{name}.log").write_text(buffer.getvalue())
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/device_check.sh", description=__doc__)
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--smoke-cpu", action="store_true", help="tiny shapes on the CPU, about a minute")
    parser.add_argument("--only", default="", help="comma-separated sections (default: all, in order)")
    args = parser.parse_args(argv)
    out = args.results_dir
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.only.split(",") if n] or list(SECTIONS)
    unknown = set(names) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if "env" not in names and not (out / "card.txt").exists():
        names.insert(0, "env")  # the report's file name comes from it
    os.environ["TRITON_INTERPRET"] = "1" if args.smoke_cpu else "0"  # before anything imports Triton
    start = time.monotonic()
    outcomes: dict[str, str] = {}
    for name in names:
        began = time.monotonic()
        print(f"== {name} ...", flush=True)
        outcomes[name] = run_inline(name, out) if args.smoke_cpu else run_child(name, out, SECTIONS[name])
        status = Section.load(out / f"{name}.json").status if (out / f"{name}.json").exists() else "no result"
        print(f"== {name}: {outcomes[name] or status} ({time.monotonic() - began:.0f} s)", flush=True)
    path = report.write(out, outcomes, args.smoke_cpu, time.monotonic() - start)
    print(f"\nwrote {path}\n")
    text = path.read_text()
    print(text[: text.find("\n## ", text.find("## Goals") + 1)])  # the summary and the goals
    sections = [report.load(out, n, outcomes[n]) for n in names]
    return 0 if all(s.status in ("ok", "skipped") for s in sections) else 1


if __name__ == "__main__":
    sys.exit(main())
