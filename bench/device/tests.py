"""Section `tests`: every GPU-marked test (the compiled kernels against the reference, the sampler's CUDA rows,
whatever else carries `pytest.mark.gpu`) with TRITON_INTERPRET=0 and a per-test timeout.

Files: all of tests/kernels, and every file under tests/ that marks a test `gpu` (found by text, so new GPU
tests join without editing this list; today that adds tests/server/test_sampling_batched.py's
`test_cuda_rows_draw_the_cpus_tokens`). Collection errors (a module this machine lacks) are reported and the
rest still runs. The smoke run collects the same tests; without CUDA they skip.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from bench.device.common import Section, section_args, skip_unless_importable

ROOT = Path(__file__).resolve().parents[2]
TEST_TIMEOUT_S = 120


def gpu_test_files() -> list[str]:
    files = {"tests/kernels"}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if path.parent.name == "kernels":
            continue
        if "mark.gpu" in path.read_text(errors="replace"):
            files.add(str(path.relative_to(ROOT)))
    return sorted(files)


def summarize(junit: Path, section: Section) -> bool:
    """Counts and failures from pytest's junit XML; True when nothing failed."""
    if not junit.exists():
        section.add("no junit report: pytest did not finish (see tests.log)")
        return False
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    section.add(
        f"{passed} passed, {counts['failures']} failed, {counts['errors']} errors, {counts['skipped']} skipped "
        f"in {float(suite.get('time', 0)):.0f} s",
    )
    bad = []
    for case in suite.iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            name = f"{case.get('classname')}::{case.get('name')}"
            bad.append(f"- FAILED `{name}`: {(problem.get('message') or '')[:200]}")
    if bad:
        section.add("", *bad)
    return not bad


def run_inline(pytest_args: list[str], log: Path) -> int:
    import contextlib

    import pytest

    with log.open("w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        return int(pytest.main([*pytest_args, "--rootdir", str(ROOT)]))


def main(argv: list[str] | None = None) -> None:
    args = section_args(__doc__, argv)
    section = Section("tests", "GPU tests (compiled kernels, per-test timeout)")
    if skip_unless_importable(section, args.out, "pytest"):
        return
    files = gpu_test_files()
    junit = args.out / "tests.xml"
    budget = int(os.environ.get("SWAPYARD_SECTION_BUDGET_S", "240"))
    if importlib.util.find_spec("pytest_timeout") is not None:
        timeout = [f"--timeout={TEST_TIMEOUT_S}"]
    else:
        timeout = ["-p", "bench.device.alarm_timeout"]
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider"]
    cmd += [*timeout, "--continue-on-collection-errors", f"--junitxml={junit}", *files]
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1" if args.smoke_cpu else "0",
        "SWAPYARD_TEST_TIMEOUT_S": str(TEST_TIMEOUT_S),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    section.add(
        f"`{' '.join(cmd[1:])}` (TRITON_INTERPRET={env['TRITON_INTERPRET']}), files: {', '.join(files)}"
    )
    section.add(f"per-test timeout: {TEST_TIMEOUT_S} s ({timeout[-1]}); whole run: {budget - 15} s", "")
    log = args.out / "tests.pytest.log"
    if args.smoke_cpu:  # in this process (the driver's smoke run): no second torch import; the tests skip
        ok = run_inline(cmd[3:], log) in (0, 5) and summarize(junit, section)  # 5: nothing collected
    else:
        try:
            with log.open("w") as sink:
                proc = subprocess.run(
                    cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=budget - 15
                )
            ok = summarize(junit, section) and proc.returncode in (0, 5)
        except subprocess.TimeoutExpired:
            section.add(
                f"pytest ran past {budget - 15} s and was stopped; partial output in tests.pytest.log"
            )
            ok = False
    tail = log.read_text(errors="replace").splitlines()[-15:]
    section.add("", "pytest's last lines:", "```", *tail, "```")
    section.status = "ok" if ok else "failed"
    section.save(args.out)


if __name__ == "__main__":
    main()
