"""The HTTP surface against hostile or unlucky clients: bodies that cannot be parsed say why, `Retry-After`
on every 429 and 503, a 408 for a body that stops arriving, docs behind the key when keys are set, and one
traceback (not two) per 500."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings

API, ADMIN = "api-secret", "admin-secret"
OK = {"inputs": "w1 w2", "parameters": {"max_new_tokens": 2}}


def _bearer(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def _unstarted(**settings: Any) -> TestClient:
    """The app without its lifespan: no model is loaded, the engine never starts (routes answer 503)."""
    return TestClient(create_app(Settings(base_model="unused", **settings)), raise_server_exceptions=False)


def _wait_until(condition: Any, what: str) -> None:
    """Poll a condition the test itself brings about (bounded: 10 s), never a fixed sleep."""
    event = threading.Event()
    for _ in range(1000):
        if condition():
            return
        event.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_unparsable_bodies_say_why() -> None:
    """They were a 400 "There was an error parsing the body" (error_type http_error). The body is parsed
    before the engine is asked for, so no model is needed."""
    client = _unstarted()
    cases = {
        b"[" * 1500 + b"]" * 1500: "nested too deeply",
        b'{"inputs": "w1", "parameters": {"seed": 1' + b"0" * 5000 + b"}}": "too long",
        b'{"inputs": "\xff\xfe"}': "not UTF-8",
    }
    for content, reason in cases.items():
        response = client.post("/generate", content=content, headers={"content-type": "application/json"})
        assert response.status_code == 400 and response.json()["error_type"] == "invalid_json", response.text
        assert reason in response.json()["error"], response.text


# -- Retry-After -------------------------------------------------------------------------------------------
def test_503_not_ready_and_draining_carry_retry_after() -> None:
    client = _unstarted()
    for response in (client.post("/generate", json=OK), client.get("/ready")):  # the engine is not running
        assert response.status_code == 503 and response.json()["error_type"] == "not_ready"
        assert int(response.headers["retry-after"]) > 0
    client.app.state.swapyard.begin_drain()  # refused by InflightMiddleware itself
    refused = client.post("/generate", json=OK)
    assert refused.status_code == 503 and refused.json()["error_type"] == "not_ready"
    assert int(refused.headers["retry-after"]) > 0
    assert "retry-after" not in client.get("/health").headers  # a 200 carries none


def test_queue_full_429_carries_retry_after(llama_dir: Path) -> None:
    """The engine is held (Engine.hold), so the first request stays queued and the second finds the queue
    full: no timing involved."""
    settings = Settings(base_model=str(llama_dir), max_batch_size=1, max_queued_requests=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        engine = client.app.state.swapyard.engine
        results: list[httpx.Response] = []
        with engine.hold() as held:
            first = threading.Thread(target=lambda: results.append(client.post("/generate", json=OK)))
            first.start()
            held.wait_queued(1)
            assert "swapyard_queue_depth 1.0" in client.get("/metrics").text
            full = client.post("/generate", json=OK)
        first.join(60)
        assert full.status_code == 429 and full.json()["error_type"] == "queue_full", full.text
        assert int(full.headers["retry-after"]) > 0
        assert [r.status_code for r in results] == [200]


# -- slow clients: the body read is bounded ----------------------------------------------------------------
async def _asgi_post(app: Any, receive: Any, path: str = "/generate") -> tuple[int, dict[str, str], Any]:
    """POST through the ASGI interface with a caller-made `receive`; (status, headers, JSON body)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8080),
    }
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], headers, json.loads(body)


def test_a_body_that_stops_arriving_gets_408() -> None:
    """A Content-Length of 1000 with 12 bytes sent and nothing after: the handler gave up never before."""
    app = create_app(Settings(base_model="unused", request_read_timeout_s=0.05))
    calls = 0

    async def stalled_receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b'{"inputs": "', "more_body": True}
        await asyncio.Event().wait()  # the rest never comes
        raise AssertionError("unreachable")

    status, headers, body = asyncio.run(_asgi_post(app, stalled_receive))
    assert status == 408 and body["error_type"] == "request_timeout"
    assert "--request-read-timeout-s" in body["error"]
    assert headers["connection"] == "close"


def test_only_the_body_read_is_bounded() -> None:
    """Once the body is whole, `receive()` waits for a disconnect for as long as the response runs
    (streaming routes listen the whole time): that wait is never cut by the read timeout. The second
    receive below answers after ten timeouts' worth of loop time: loop timers fire in deadline order."""
    from server.middleware import ReceiveTimeoutMiddleware

    timeout = 0.02
    got: list[dict[str, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        got.append(await receive())
        got.append(await receive())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        if not got:
            return {"type": "http.request", "body": b"{}", "more_body": False}
        later = asyncio.Event()
        asyncio.get_running_loop().call_later(10 * timeout, later.set)
        await later.wait()
        return {"type": "http.disconnect"}

    async def run() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await ReceiveTimeoutMiddleware(inner, timeout)({"type": "http"}, receive, send)
        return sent

    sent = asyncio.run(run())
    assert [m["type"] for m in got] == ["http.request", "http.disconnect"]
    assert sent[0]["status"] == 204


# -- the docs when keys are set ----------------------------------------------------------------------------
DOCS = ("/openapi.json", "/docs", "/redoc")


@pytest.mark.parametrize(
    ("keys", "good"),
    [({"api_key": API, "admin_key": ADMIN}, (API, ADMIN)), ({"admin_key": ADMIN}, (ADMIN,))],
    ids=["api-and-admin-key", "admin-key-only"],
)
def test_docs_need_a_key_when_keys_are_set(keys: dict[str, str], good: tuple[str, ...]) -> None:
    client = _unstarted(**keys)
    for path in DOCS:
        for key in (None, "not-the-key"):
            refused = client.get(path, headers=_bearer(key))
            assert refused.status_code == 401, (path, key, refused.text)
            assert refused.json()["error_type"] == "unauthorized"
        for key in good:
            assert client.get(path, headers=_bearer(key)).status_code == 200, (path, key)
    schema = client.get("/openapi.json", headers=_bearer(good[0])).json()
    assert "/v1/adapters" in schema["paths"] and "/generate" in schema["paths"]
    assert not any(p in schema["paths"] for p in DOCS)  # the docs routes do not document themselves


def test_docs_can_be_turned_off_when_keys_are_set() -> None:
    client = _unstarted(api_key=API, admin_key=ADMIN, docs_when_keyed="off")
    for path in DOCS:
        for key in (None, API, ADMIN):
            response = client.get(path, headers=_bearer(key))
            assert response.status_code == 404 and response.json()["error_type"] == "not_found", path


def test_docs_are_open_without_keys() -> None:
    client = _unstarted()
    for path in DOCS:
        assert client.get(path).status_code == 200, path


# -- one traceback per 500 ---------------------------------------------------------------------------------
def test_an_unhandled_error_logs_one_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """Under a real uvicorn: the app answered a JSON 500 and logged the traceback, then Starlette re-raised
    the exception and uvicorn logged it again ("Exception in ASGI application")."""
    app = create_app(Settings(base_model="unused"))

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom, methods=["GET"])
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    with caplog.at_level(logging.ERROR):
        thread.start()
        try:
            _wait_until(lambda: server.started, "uvicorn to start")
            port = server.servers[0].sockets[0].getsockname()[1]
            with httpx.Client() as http:
                response = http.get(f"http://127.0.0.1:{port}/boom")
        finally:
            server.should_exit = True
            thread.join(30)  # uvicorn waits for the request's task: its logging is done by now
    assert response.status_code == 500
    assert response.json() == {"error": "internal error: RuntimeError", "error_type": "internal"}
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 1, [(r.name, r.getMessage()) for r in tracebacks]
    assert "GET /boom" in tracebacks[0].getMessage()


def test_an_engine_failure_logs_one_traceback(
    llama_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine logs a failed step with its traceback; the request it fails then logged it again."""
    app = create_app(Settings(base_model=str(llama_dir)))
    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level(logging.ERROR):
        engine = app.state.swapyard.engine
        model = engine.model
        step = model.paged_step  # the model call of every step with rows

        def failing_step(*args: Any, **kwargs: Any) -> Any:
            monkeypatch.setattr(model, "paged_step", step)  # once
            raise RuntimeError("injected device error")

        monkeypatch.setattr(model, "paged_step", failing_step)
        response = client.post("/generate", json={"inputs": "w1 w2", "parameters": {"max_new_tokens": 3}})
        assert response.status_code == 500 and "RuntimeError" in response.json()["error"]
        assert client.post("/generate", json=OK).status_code == 200
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert [r.name for r in tracebacks] == ["swapyard.engine"], [(r.name, r.getMessage()) for r in tracebacks]
    lines = [r.getMessage() for r in caplog.records if r.name == "swapyard.server"]
    assert any("POST /generate" in m and "injected device error" in m for m in lines), lines


def test_a_500_still_answers_json_in_process() -> None:
    app = create_app(Settings(base_model="unused"))

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom, methods=["GET"])
    response = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert response.status_code == 500 and response.json()["error_type"] == "internal"
    metrics = TestClient(app).get("/metrics").text
    assert 'swapyard_requests_total{route="/boom",status="500"} 1.0' in metrics
