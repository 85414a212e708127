"""Bad input through the real app: each gets its status and the JSON error shape, and the server keeps
serving. Limits are set small so that each is easy to cross."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings

OK = {"inputs": "w1 w2", "parameters": {"max_new_tokens": 2}}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def client(llama_dir: Path, causal_adapters: dict[str, Path]) -> Iterator[TestClient]:
    settings = Settings(
        base_model=str(llama_dir),
        adapters=[f"lora4={causal_adapters['lora4']}"],
        max_input_tokens=16,
        max_total_tokens=30,
        max_new_tokens_limit=20,
        max_stop_sequences=2,
        max_request_bytes=4096,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def _check(response, status: int, error_type: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "error_type"} and isinstance(body["error"], str)
    if error_type is not None:
        assert body["error_type"] == error_type
    return body


CASES = [
    ("malformed json", dict(content=b'{"inputs": "w1"', headers={"content-type": "application/json"}), 400),
    ("not utf-8", dict(content=b'{"inputs": "\xff\xfe"}', headers={"content-type": "application/json"}), 400),
    ("wrong type", dict(json={"inputs": 5}), 422),
    ("wrong param type", dict(json={"inputs": "w1", "parameters": {"max_new_tokens": "many"}}), 422),
    ("empty input", dict(json={"inputs": ""}), 422),
    ("missing input", dict(json={"parameters": {}}), 422),
    ("unknown field", dict(json={"inputs": "w1", "parameters": {"max_tokens": 3}}), 422),
    ("input over limit", dict(json={"inputs": " ".join(["w1"] * 30)}), 422),
    ("max_new_tokens over limit", dict(json={"inputs": "w1", "parameters": {"max_new_tokens": 21}}), 422),
    (
        "total over limit",
        dict(json={"inputs": " ".join(["w1"] * 15), "parameters": {"max_new_tokens": 20}}),
        422,
    ),
    ("negative temperature", dict(json={"inputs": "w1", "parameters": {"temperature": -1}}), 422),
    ("nan temperature", dict(content=b'{"inputs": "w1", "parameters": {"temperature": NaN}}'), 422),
    ("infinite top_p", dict(content=b'{"inputs": "w1", "parameters": {"top_p": Infinity}}'), 422),
    ("top_p above one", dict(json={"inputs": "w1", "parameters": {"top_p": 1.5}}), 422),
    ("negative top_k", dict(json={"inputs": "w1", "parameters": {"top_k": -3}}), 422),
    ("zero max_new_tokens", dict(json={"inputs": "w1", "parameters": {"max_new_tokens": 0}}), 422),
    ("negative seed", dict(json={"inputs": "w1", "parameters": {"seed": -1}}), 422),
    ("too many stops", dict(json={"inputs": "w1", "parameters": {"stop": ["a", "b", "c"]}}), 422),
    ("oversized body", dict(json={"inputs": "w1 " * 3000}), 413),
    ("unknown adapter", dict(json={"inputs": "w1", "parameters": {"adapter_id": "nope"}}), 404),
    # Odd text: a lone surrogate (JSON can spell one) is a 422, wherever it is; NUL is just a character.
    ("lone surrogate in inputs", dict(content=b'{"inputs": "w1 \\ud83d"}', headers=JSON), 422),
    (
        "lone surrogate in stop",
        dict(content=b'{"inputs": "w1", "parameters": {"stop": ["\\ud83d"]}}', headers=JSON),
        422,
    ),
    (
        "lone surrogate in adapter",
        dict(content=b'{"inputs": "w1", "parameters": {"adapter_id": "\\udc00"}}', headers=JSON),
        422,
    ),
    ("lone surrogate as a key", dict(content=b'{"inputs": "w1", "\\ud83d": 1}', headers=JSON), 422),
    # Strict types: no coercion of strings, bools or floats into ints, nor of ints or strings into bools.
    ("max_new_tokens as string", dict(json={"inputs": "w1", "parameters": {"max_new_tokens": "10"}}), 422),
    ("max_new_tokens as bool", dict(json={"inputs": "w1", "parameters": {"max_new_tokens": True}}), 422),
    ("max_new_tokens as float", dict(json={"inputs": "w1", "parameters": {"max_new_tokens": 2.0}}), 422),
    ("do_sample as int", dict(json={"inputs": "w1", "parameters": {"do_sample": 1}}), 422),
    ("details as string", dict(json={"inputs": "w1", "parameters": {"details": "true"}}), 422),
    ("seed as string", dict(json={"inputs": "w1", "parameters": {"seed": "7"}}), 422),
    ("temperature as string", dict(json={"inputs": "w1", "parameters": {"temperature": "0.5"}}), 422),
    ("inputs as list", dict(json={"inputs": ["w1"]}), 422),
]


@pytest.mark.parametrize("route", ["/generate", "/generate_stream"])
@pytest.mark.parametrize(("case", "kwargs", "status"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_then_still_serving(client, route, case, kwargs, status) -> None:
    body = _check(client.post(route, **kwargs), status)
    if status == 404:
        assert "nope" in body["error"]
    assert client.post("/generate", json=OK).status_code == 200


def test_openai_bad_input(client) -> None:
    _check(client.post("/v1/completions", json={"model": "nope", "prompt": "w1"}), 404, "unknown_adapter")
    _check(client.post("/v1/completions", json={"model": "lora4", "prompt": "w1", "temperature": 3}), 422)
    _check(client.post("/v1/completions", json={"model": "lora4", "prompt": "w1", "n": 17}), 422)  # n <= 16
    _check(client.post("/v1/chat/completions", json={"model": "lora4", "messages": []}), 422)
    _check(client.post("/classify", json={"inputs": "w1"}), 400, "bad_request")  # a causal LM has no head
    _check(client.get("/nowhere"), 404, "not_found")


def test_odd_text_is_a_422_on_every_text_route(client) -> None:
    """A lone surrogate reached the tokenizer (TypeError, 500) from a chat message; echoed in an error
    message it broke the JSON response (500). Each is now a 422 that names the character."""
    chat = b'{"model": "lora4", "messages": [{"role": "user", "content": "w1 %s"}]%s}'
    cases = [
        ("/v1/chat/completions", chat % (b"\\ud83d", b"")),
        ("/v1/chat/completions", chat % (b"w2", b', "stop": "\\ud83d"')),
        ("/v1/completions", b'{"model": "lora4", "prompt": "w1 \\ud83d"}'),
        ("/v1/completions", b'{"model": "\\ud83d", "prompt": "w1"}'),
    ]
    for route, content in cases:
        body = _check(client.post(route, content=content, headers=JSON), 422, "validation")
        assert "lone surrogate ('\\ud83d'" in body["error"], (route, body)
    nul = {"inputs": "w1 \u0000 w2", "parameters": {"max_new_tokens": 2}}
    assert client.post("/generate", json=nul).status_code == 200
    nul_chat = {"model": "lora4", "messages": [{"role": "user", "content": "w1\u0000"}], "max_tokens": 2}
    assert client.post("/v1/chat/completions", json=nul_chat).status_code == 200
    assert client.post("/generate", json=OK).status_code == 200


def test_truncate_applies_before_the_input_limit(client) -> None:
    long = " ".join(["w1"] * 30)  # over max_input_tokens (16)
    _check(client.post("/generate", json={"inputs": long}), 422)
    ok = client.post("/generate", json={"inputs": long, "parameters": {"truncate": 10, "max_new_tokens": 2}})
    assert ok.status_code == 200, ok.text
    over = client.post("/generate", json={"inputs": "w1", "parameters": {"truncate": 17}})
    assert "--max-input-tokens" in _check(over, 422, "validation")["error"]


def test_openai_types_are_strict(client) -> None:
    base = {"model": "lora4", "prompt": "w1"}
    for field, value in (("max_tokens", "5"), ("max_tokens", True), ("stream", "false"), ("seed", 1.0)):
        body = _check(client.post("/v1/completions", json={**base, field: value}), 422, "validation")
        assert field in body["error"]
    ok = client.post("/v1/completions", json={**base, "max_tokens": 2, "temperature": 0, "top_p": 1})
    assert ok.status_code == 200, ok.text  # floats take ints


def test_chunked_body_over_limit(client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": "'
        for _ in range(10):
            yield b"w1 " * 200
        yield b'"}'

    _check(client.post("/generate", content=chunks(), headers={"content-type": "application/json"}), 413)


def test_queue_full_is_429(llama_dir: Path) -> None:
    """The engine is held (no step runs), so the first request stays queued for sure and the second finds
    the queue full; released, the first is served."""
    settings = Settings(base_model=str(llama_dir), max_batch_size=1, max_queued_requests=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        engine = c.app.state.swapyard.engine
        statuses: list[int] = []
        queued = threading.Thread(target=lambda: statuses.append(c.post("/generate", json=OK).status_code))
        with engine.hold() as held:
            queued.start()
            held.wait_queued(1)
            body = _check(c.post("/generate", json=OK), 429, "queue_full")
            assert "--max-queued-requests" in body["error"]
        queued.join(timeout=60)
        assert statuses == [200]
        assert c.post("/generate", json=OK).status_code == 200
        assert 'swapyard_rejected_requests_total{reason="queue_full"} 1.0' in c.get("/metrics").text
