"""`n` and `best_of` (issue 17.2): n rows with derived seeds (seed, seed+1, ... as vLLM), `best_of` keeping the
candidates with the highest cumulative logprob, on OpenAI completions and chat and TGI /generate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serve_helpers import prompt

from server.app import create_app
from server.settings import Settings

NEW = 6


@pytest.fixture(scope="module")
def client(llama_dir: Path, causal_adapters: dict[str, Path]) -> Iterator[TestClient]:
    app = create_app(
        Settings(base_model=str(llama_dir), adapters=[f"lora4={causal_adapters['lora4']}"], max_batch_size=8)
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _completion(client: TestClient, **body: object) -> dict:
    base = {"model": "lora4", "prompt": prompt(41), "max_tokens": NEW, "temperature": 1.5}
    response = client.post("/v1/completions", json={**base, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_completions_n_are_rows_with_derived_seeds(client) -> None:
    many = _completion(client, n=3, seed=10)
    singles = [_completion(client, seed=10 + i)["choices"][0]["text"] for i in range(3)]
    assert [c["index"] for c in many["choices"]] == [0, 1, 2]
    assert [c["text"] for c in many["choices"]] == singles
    assert len(set(singles)) == 3  # the seeds really differ
    usage = many["usage"]
    assert usage["completion_tokens"] == 3 * NEW and usage["prompt_tokens"] == len(prompt(41).split())


def test_completions_best_of_keeps_the_highest_cumulative_logprob(client) -> None:
    candidates = [_completion(client, seed=20 + i, logprobs=0)["choices"][0] for i in range(4)]
    totals = [sum(c["logprobs"]["token_logprobs"]) for c in candidates]
    ranked = [candidates[i]["text"] for i in sorted(range(4), key=lambda i: -totals[i])]
    best = _completion(client, n=2, best_of=4, seed=20)
    assert [c["text"] for c in best["choices"]] == ranked[:2]
    assert [c["index"] for c in best["choices"]] == [0, 1]


def test_best_of_refusals(client) -> None:
    body = {"model": "lora4", "prompt": "w1", "max_tokens": 2}
    small = client.post("/v1/completions", json={**body, "n": 3, "best_of": 2})
    assert small.status_code == 422 and "best_of (2) must be at least n (3)" in small.json()["error"]
    streamed = client.post("/v1/completions", json={**body, "best_of": 2, "stream": True})
    assert streamed.status_code == 422 and "cannot stream" in streamed.json()["error"]
    too_many = client.post("/v1/completions", json={**body, "n": 17})
    assert too_many.status_code == 422


def test_greedy_n_gives_identical_choices_as_vllm(client) -> None:
    many = _completion(client, n=2, temperature=0)
    assert many["choices"][0]["text"] == many["choices"][1]["text"]


def test_chat_n_streams_every_choice_and_counts_usage(client) -> None:
    body = {
        "model": "lora4",
        "messages": [{"role": "user", "content": prompt(42)}],
        "max_tokens": NEW,
        "n": 2,
        "seed": 5,
        "temperature": 1.5,
    }
    plain = client.post("/v1/chat/completions", json=body).json()
    contents = [c["message"]["content"] for c in plain["choices"]]
    assert len(contents) == 2 and contents[0] != contents[1]
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=stream) as response:
        lines = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(x) for x in lines[:-1]]
    texts = ["", ""]
    roles = [0, 0]
    for c in chunks[:-1]:
        (choice,) = c["choices"]
        texts[choice["index"]] += choice["delta"]["content"]
        roles[choice["index"]] += "role" in choice["delta"]
    assert texts == contents and roles == [1, 1]
    assert chunks[-1]["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"] == 2 * NEW


def test_tgi_best_of_returns_the_best_and_the_others(client) -> None:
    text = prompt(43)

    def generate(**params: object) -> dict:
        body = {"inputs": text, "parameters": {"max_new_tokens": NEW, "details": True, **params}}
        response = client.post("/generate", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    singles = [generate(do_sample=True, seed=7 + i) for i in range(3)]
    totals = [sum(t["logprob"] for t in s["details"]["tokens"]) for s in singles]
    best = singles[max(range(3), key=lambda i: totals[i])]
    out = generate(do_sample=True, seed=7, best_of=3)
    assert out["generated_text"] == best["generated_text"]
    assert out["details"]["seed"] == best["details"]["seed"]
    others = out["details"]["best_of_sequences"]
    assert sorted(o["generated_text"] for o in others) == sorted(
        s["generated_text"] for s in singles if s is not best
    )
    greedy = client.post("/generate", json={"inputs": text, "parameters": {"best_of": 2}})
    assert greedy.status_code == 422 and "needs sampling" in greedy.json()["error"]
    streamed = client.post(
        "/generate_stream", json={"inputs": text, "parameters": {"best_of": 2, "do_sample": True}}
    )
    assert streamed.status_code == 422 and "cannot stream" in streamed.json()["error"]
