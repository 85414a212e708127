"""One row's failure is that row's alone (issue 12, bug 1). The engine is held while the requests queue up, so
all of them are admitted, prefilled and sampled in the same steps; then each answer is compared with the
same request served alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serve_helpers import prompt

from server.app import create_app
from server.settings import Settings
from server.tokenization import IncrementalDecoder

NEW = 12


@pytest.fixture(scope="module")
def client(llama_dir: Path, causal_adapters: dict[str, Path]) -> Iterator[TestClient]:
    settings = Settings(base_model=str(llama_dir), adapters=[f"lora4={causal_adapters['lora4']}"])
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def _generate(text: str, adapter: str | None = None, **params: Any) -> dict:
    parameters = {"adapter_id": adapter, "max_new_tokens": NEW, "details": True, **params}
    return {"inputs": text, "parameters": parameters}


def _tokens(response: Any) -> list[int]:
    assert response.status_code == 200, response.text
    return [t["id"] for t in response.json()["details"]["tokens"]]


def _in_one_step(client: TestClient, calls: list[tuple[str, dict]]) -> list[Any]:
    """POST every call while the engine is held, so that they all join the batch in the same step."""
    engine = client.app.state.swapyard.engine  # type: ignore[attr-defined]
    responses: list[Any] = [None] * len(calls)

    def post(i: int) -> None:
        responses[i] = client.post(calls[i][0], json=calls[i][1])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(calls))]
    with engine.hold() as held:
        for t in threads:
            t.start()
        held.wait_queued(len(calls))
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a request got no response"
    return responses


@pytest.mark.timeout(300)
def test_extreme_sampling_rows_do_not_fail_their_batch(client: TestClient) -> None:
    """temperature 5e-324 / 1e-300 and top_p 1e-300 used to raise 'probability tensor contains inf/nan' inside
    the step, failing every row with them. Now they are computed exactly (their limit is the argmax): each
    equals its greedy answer, and the greedy row on another adapter is exactly its answer alone."""
    greedy = _generate(prompt(1), "lora4")
    tiny_t = _generate(prompt(2), None, do_sample=True, temperature=5e-324, seed=1)
    tiny_t2 = _generate(prompt(3), None, temperature=1e-300)
    tiny_p = {"model": "lora4", "prompt": prompt(4), "max_tokens": NEW, "top_p": 1e-300, "seed": 3}
    mixed = _in_one_step(
        client,
        [("/generate", greedy), ("/generate", tiny_t), ("/generate", tiny_t2), ("/v1/completions", tiny_p)],
    )
    assert _tokens(mixed[0]) == _tokens(client.post("/generate", json=greedy))
    assert _tokens(mixed[1]) == _tokens(client.post("/generate", json=_generate(prompt(2))))
    assert _tokens(mixed[2]) == _tokens(client.post("/generate", json=_generate(prompt(3))))
    assert mixed[3].status_code == 200, mixed[3].text
    alone = client.post("/v1/completions", json={**tiny_p, "temperature": 0, "top_p": None})
    assert mixed[3].json()["choices"][0]["text"] == alone.json()["choices"][0]["text"]


@pytest.mark.timeout(300)
def test_a_row_whose_detokenization_fails_fails_alone(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim, other = _generate(prompt(5)), _generate(prompt(6), "lora4")
    victim_tokens = _tokens(client.post("/generate", json=victim))
    other_alone = _tokens(client.post("/generate", json=other))
    poison = victim_tokens[1]  # the victim's second token: it fails mid-answer, after one token
    assert poison not in other_alone and poison not in victim_tokens[:1], "pick prompts that differ"

    push = IncrementalDecoder.push  # a row's detokenization step (DecodeStream: no full decode per token)

    def failing_push(self: IncrementalDecoder, token_id: int) -> str:
        if token_id == poison:
            raise RuntimeError("injected detokenization failure")
        return push(self, token_id)

    monkeypatch.setattr(IncrementalDecoder, "push", failing_push)
    streamed = {**victim, "parameters": {**victim["parameters"], "details": False}}
    failed, survived, failed_stream = _in_one_step(
        client, [("/generate", victim), ("/generate", other), ("/generate_stream", streamed)]
    )
    assert failed.status_code == 500 and "RuntimeError" in failed.json()["error"], failed.text
    assert _tokens(survived) == other_alone
    events = [line for line in failed_stream.text.splitlines() if line.startswith("data:")]
    assert len(events) == 2 and '"error_type"' in events[-1], failed_stream.text  # one token, then the error
    monkeypatch.undo()
    assert _tokens(client.post("/generate", json=victim)) == victim_tokens  # the server keeps serving
