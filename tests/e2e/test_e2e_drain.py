"""SIGTERM on a real `swapyard serve`: /ready and new requests answer 503 at once, while a request accepted
before the signal — an adapter upload still streaming in and then loading — completes; then the process exits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serve_helpers import make_causal_adapters, prompt, save_base

pytestmark = pytest.mark.e2e
ADMIN = {"Authorization": "Bearer admin-secret"}
BOUNDARY = "swapyard-e2e-boundary"


def _multipart(name: str, adapter: Path) -> tuple[bytes, bytes]:
    """An upload body split in two: everything but the last bytes, and those."""
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="name"\r\n\r\n{name}\r\n'.encode()]
    for field, filename in (("config", "adapter_config.json"), ("weights", "adapter_model.safetensors")):
        head = (
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; "
            f'name="{field}"; filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        parts.append(head.encode() + (adapter / filename).read_bytes() + b"\r\n")
    body = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
    return body[:-64], body[-64:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    base = save_base("llama", tmp_path_factory.mktemp("llama"))
    adapters = make_causal_adapters(base, tmp_path_factory.mktemp("adapters"), names=["lora4"])
    port = _free_port()
    args = [
        sys.executable, "-m", "swapyard",
        "serve",
        "--base-model", str(base),
        "--adapter", f"lora4={adapters['lora4']}",
        "--admin-key", "admin-secret",
        "--uploads-dir", str(tmp_path_factory.mktemp("uploads")),
        "--drain-timeout-s", "60",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = tmp_path_factory.mktemp("log") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(450):  # bounded: 90 s
            if proc.poll() is not None:
                raise RuntimeError(f"swapyard serve exited:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield proc, url, adapters["lora4"]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_sigterm_drains_then_exits(served) -> None:
    proc, url, adapter = served
    head, tail = _multipart("late", adapter)
    release = threading.Event()
    results: list[httpx.Response] = []

    def body() -> Iterator[bytes]:
        yield head
        release.wait(30)  # the request stays in flight until the test lets it finish
        yield tail

    def upload() -> None:
        headers = {
            **ADMIN,
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
            "Content-Length": str(len(head) + len(tail)),
        }
        results.append(httpx.post(f"{url}/v1/adapters", content=body(), headers=headers, timeout=60))

    uploading = threading.Thread(target=upload)
    uploading.start()
    time.sleep(1.0)  # the upload's headers and first bytes are in: it is accepted
    proc.send_signal(signal.SIGTERM)
    for _ in range(100):  # bounded: 10 s
        if httpx.get(f"{url}/ready", timeout=5).status_code == 503:
            break
        time.sleep(0.1)
    assert httpx.get(f"{url}/ready", timeout=5).status_code == 503
    refused = httpx.post(f"{url}/generate", json={"inputs": prompt(3), "parameters": {"adapter_id": "lora4"}})
    assert refused.status_code == 503 and refused.json()["error_type"] == "not_ready"
    assert proc.poll() is None  # still draining: the upload is in flight
    release.set()
    uploading.join(60)
    assert [r.status_code for r in results] == [201], [r.text for r in results]
    assert results[0].json()["name"] == "late"
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM, 128 + signal.SIGTERM)  # uvicorn re-raises it
