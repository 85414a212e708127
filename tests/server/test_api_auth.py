"""Auth: an optional API key on inference routes, a separate admin key on every admin route (off without it),
operations routes open; graceful drain: /ready and new requests 503 while accepted ones finish."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serve_helpers import prompt

from server.app import create_app
from server.settings import Settings

API, ADMIN, WRONG = "api-secret", "admin-secret", "not-the-key"
# (method, path, JSON body, status with the admin key): past auth, each answers for itself.
ADMIN_ROUTES = [
    ("GET", "/v1/adapters", None, 200),
    ("GET", "/v1/adapters/lora4", None, 200),
    ("POST", "/v1/adapters/lora4/load", {"source": "local", "path": "x"}, 403),  # no --adapter-root: off
    ("DELETE", "/v1/adapters/nope", None, 404),
    ("POST", "/v1/adapters", None, 422),  # no multipart fields
]


def _bearer(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def _call(client: TestClient, method: str, path: str, body: dict | None, key: str | None):
    return client.request(method, path, json=body, headers=_bearer(key))


@pytest.fixture(scope="module")
def keyed(llama_dir: Path, causal_adapters: dict[str, Path]) -> Iterator[TestClient]:
    settings = Settings(
        base_model=str(llama_dir),
        adapters=[f"lora4={causal_adapters['lora4']}"],
        api_key=API,
        admin_key=ADMIN,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def open_server(llama_dir: Path, causal_adapters: dict[str, Path]) -> Iterator[TestClient]:
    settings = Settings(base_model=str(llama_dir), adapters=[f"lora4={causal_adapters['lora4']}"])
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(("method", "path", "body", "status"), ADMIN_ROUTES)
def test_admin_routes_need_the_admin_key(keyed, method, path, body, status) -> None:
    for key, refused in ((None, 401), (WRONG, 401), (API, 403)):  # the API key is valid, but not here
        response = _call(keyed, method, path, body, key)
        assert response.status_code == refused, (key, response.text)
        assert response.json()["error_type"] == ("forbidden" if refused == 403 else "unauthorized")
    assert _call(keyed, method, path, body, ADMIN).status_code == status


@pytest.mark.parametrize(("method", "path", "body", "status"), ADMIN_ROUTES)
def test_admin_routes_are_off_without_an_admin_key(open_server, method, path, body, status) -> None:
    response = _call(open_server, method, path, body, None)
    assert response.status_code == 404 and response.json()["error_type"] == "not_found"


class BodyCounter:
    """ASGI wrapper: counts the request-body bytes the app pulls through `receive`."""

    def __init__(self, app) -> None:
        self.app = app
        self.received = 0

    async def __call__(self, scope, receive, send) -> None:
        async def counting_receive():
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
            return message

        await self.app(scope, counting_receive, send)


def test_an_upload_is_refused_before_its_body_is_read(keyed) -> None:
    counter = BodyCounter(keyed.app)
    client = TestClient(counter, raise_server_exceptions=False)  # the app's lifespan already ran (keyed)
    files = {
        "config": ("adapter_config.json", b"{}"),
        "weights": ("adapter_model.safetensors", b"\0" * 300_000),
    }
    for key, status in ((None, 401), (WRONG, 401), (API, 403)):
        response = client.post("/v1/adapters", data={"name": "big"}, files=files, headers=_bearer(key))
        assert response.status_code == status, response.text
        assert counter.received == 0, key  # refused without reading a byte of the 300 kB
    response = client.post("/v1/adapters", data={"name": "big"}, files=files, headers=_bearer(ADMIN))
    # past auth the body is read (then refused: this server has no uploads directory)
    assert response.status_code == 403 and "uploads are off" in response.json()["error"]
    assert counter.received > 300_000


def test_inference_routes_need_the_api_key_when_one_is_set(keyed, open_server) -> None:
    body = {"inputs": prompt(1), "parameters": {"adapter_id": "lora4", "max_new_tokens": 2}}
    for key, status in ((None, 401), (WRONG, 401), (API, 200), (ADMIN, 200)):
        assert keyed.post("/generate", json=body, headers=_bearer(key)).status_code == status, key
        assert keyed.get("/v1/models", headers=_bearer(key)).status_code == status, key
    unauthorized = keyed.post("/generate", json=body)
    assert unauthorized.json()["error_type"] == "unauthorized"
    for path in ("/health", "/ready", "/metrics"):  # operations stay open for probes and scrapers
        assert keyed.get(path).status_code == 200, path
    assert open_server.post("/generate", json=body).status_code == 200  # no key configured: open


def test_drain_refuses_new_requests_and_finishes_accepted_ones(llama_dir, causal_adapters) -> None:
    settings = Settings(base_model=str(llama_dir), adapters=[f"lora4={causal_adapters['lora4']}"])
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        _drain_scenario(client)


def _drain_scenario(client: TestClient) -> None:
    state = client.app.state.swapyard
    body = {"inputs": prompt(2), "parameters": {"adapter_id": "lora4", "max_new_tokens": 4}}
    results: list = []
    with state.engine.model_lock:  # hold the engine: the request below is accepted, then the drain begins
        running = threading.Thread(target=lambda: results.append(client.post("/generate", json=body)))
        running.start()
        for _ in range(500):  # bounded: 5 s
            if state.inflight >= 1 and state.engine.registry.info("lora4").leases == 1:
                break
            time.sleep(0.01)
        state.begin_drain()
        assert client.get("/ready").status_code == 503
        refused = client.post("/generate", json=body)
        assert refused.status_code == 503 and refused.json()["error_type"] == "not_ready"
    running.join(30)
    assert [r.status_code for r in results] == [200]  # accepted before the drain: served
    assert state.inflight == 0
