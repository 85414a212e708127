"""A non-streaming request whose client goes away ends its handler at once (issue 12, bug 4): the row is
cancelled, the request stops counting as in flight (a SIGTERM drain does not wait for it) and its adapter
lease is released.

The app is driven through ASGI directly, with a `receive` that yields `http.disconnect` on cue. The engine is
held the whole time, so the client is gone before any token exists and nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serve_helpers import prompt

from server.app import create_app
from server.settings import Settings

BODIES = {
    "/generate": {"inputs": prompt(1), "parameters": {"adapter_id": "lora4", "max_new_tokens": 50}},
    "/v1/completions": {"model": "lora4", "prompt": prompt(2), "max_tokens": 50},
    "/v1/chat/completions": {
        "model": "lora4",
        "messages": [{"role": "user", "content": prompt(3)}],
        "max_tokens": 50,
    },
}


@pytest.fixture(scope="module")
def client(llama_dir: Path, causal_adapters: dict[str, Path]) -> Iterator[TestClient]:
    settings = Settings(base_model=str(llama_dir), adapters=[f"lora4={causal_adapters['lora4']}"])
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def _scope(path: str, body: bytes) -> dict[str, Any]:
    headers = [
        (b"host", b"testserver"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("testclient", 50000),
        "server": ("testserver", 80),
    }


@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", list(BODIES))
def test_abandoned_request_ends_its_handler(client: TestClient, path: str) -> None:
    app: Any = client.app
    state = app.state.swapyard
    engine = state.engine
    body = json.dumps(BODIES[path]).encode()
    sent: list[dict] = []

    async def abandon(held: Any) -> None:
        gone = asyncio.Event()
        body_sent = False

        async def receive() -> dict:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        handler = asyncio.ensure_future(app(_scope(path, body), receive, send))
        await asyncio.to_thread(held.wait_queued, 1)  # queued, and no token can exist: the engine is held
        assert state.inflight == 1
        gone.set()
        # A handler that never returns fails here (the bug); one that works returns at once.
        await asyncio.wait_for(handler, timeout=30)

    with engine.hold() as held:
        client.portal.call(abandon, held)  # type: ignore[union-attr]
        assert state.inflight == 0  # returned while the engine is still held: it did not wait for it
    statuses = [m["status"] for m in sent if m["type"] == "http.response.start"]
    assert statuses and statuses[0] < 500, sent  # nobody reads it, but it is no server error

    # Released, the engine drops the cancelled row and ends its lease before it runs the next request (on the
    # base model: no lease of its own to count).
    after = {"inputs": prompt(4), "parameters": {"max_new_tokens": 2}}
    assert client.post("/generate", json=after).status_code == 200
    assert engine.registry.info("lora4").leases == 0
