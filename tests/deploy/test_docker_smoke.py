"""deploy/smoke.sh against a real Docker engine: the CPU image built and run (healthcheck, the README's
requests, an upload into the uploads volume, non-root, SIGTERM drain, a restart on the same volumes) and the
compose stack with Prometheus holding swapyard_ series. Skipped where no Docker engine answers (CI starts
none). The script's own arguments come from SWAPYARD_SMOKE_ARGS, e.g. on a machine without an image registry:

    bash deploy/debian-bases.sh
    SWAPYARD_SMOKE_ARGS="--cpu-base local/python:3.11-bookworm --prometheus-image local/prometheus:bookworm \\
        --wheels /opt/wheels" pytest -m docker tests/deploy/test_docker_smoke.py
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_helpers import REPO


def _engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(not _engine_answers(), reason="no Docker engine answers `docker info`"),
]


@pytest.mark.timeout(5400)  # a first build downloads and installs torch; the demo builds on first start
def test_image_and_compose_stack_smoke(tmp_path: Path) -> None:
    args = shlex.split(os.environ.get("SWAPYARD_SMOKE_ARGS", ""))
    env = {**os.environ, "SMOKE_OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(REPO / "deploy/smoke.sh"), *args], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"deploy/smoke.sh failed:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    summary = (tmp_path / "summary.txt").read_text()
    print(summary)  # sizes and timings: shown with -rP or -s
    for step in (
        "image size",
        "runs as uid",
        "README requests",
        "upload",
        "SIGTERM",
        "cold start",
        "compose",
    ):
        assert step in summary, f"the smoke summary has no {step!r} line:\n{summary}"
