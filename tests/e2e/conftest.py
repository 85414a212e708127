"""Start `swapyard serve` as a real process on a free 127.0.0.1 port, once per test module.

The tiny bases and PEFT adapters come from tests/server/serve_helpers.py (shared with the API tests).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))  # serve_helpers

STARTUP_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def swapyard_command() -> list[str]:
    """The `swapyard` command as `python -m swapyard`: the code of this checkout (with PYTHONPATH), never a
    console script that an older install left behind."""
    return [sys.executable, "-m", "swapyard"]


@contextmanager
def running_server(args: list[str], log_path: Path, timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[str]:
    """`swapyard serve ARGS` until the block ends; yields its base URL once /ready answers 200."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                *swapyard_command(),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"swapyard serve exited with {proc.returncode}:\n{log_path.read_text()}"
                    )
                try:
                    if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"swapyard serve not ready after {timeout_s}s:\n{log_path.read_text()}"
                    )
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture(scope="module")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[list[str]], str]]:
    """Call with serve arguments; the server lives until the module's tests end."""
    stack: list = []

    def start(args: list[str]) -> str:
        cm = running_server(args, tmp_path_factory.mktemp("serve-log") / "serve.log")
        url = cm.__enter__()
        stack.append(cm)
        return url

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)
