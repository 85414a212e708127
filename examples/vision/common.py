"""What the two vision examples share: run `swapyard train`, serve the result, post images (stdlib only)."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

SWAPYARD = [sys.executable, "-m", "swapyard"]  # this checkout's code (run from the repository root)


def swapyard_train(args: list[str]) -> None:
    """`swapyard train ARGS`; raises if it fails."""
    print("$ swapyard train " + " ".join(args), flush=True)
    subprocess.run([*SWAPYARD, "train", *args, "--no-progress"], check=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def swapyard_serve(args: list[str], log_path: Path, timeout_s: float = 120) -> Iterator[str]:
    """`swapyard serve ARGS` on a free local port until the block ends; yields its URL once /ready is 200."""
    port = _free_port()
    print(f"$ swapyard serve {' '.join(args)} --port {port}", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*SWAPYARD, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while not _ready(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"swapyard serve did not start:\n{log_path.read_text()}")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def post_json(url: str, body: dict[str, Any]) -> Any:
    """POST `body` as JSON and return the decoded answer (an HTTP error raises with the server's message)."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{url}: {exc.code} {exc.read().decode()}") from None


def image_base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def png_from_base64(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))
