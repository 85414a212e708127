"""/generate, /generate_stream and the OpenAI routes against the real app in process (tiny Llama, PEFT-made
adapters of every method): greedy tokens equal the adapter's own greedy tokens alone, streaming equals
non-streaming, seeds are reproducible, stop sequences and limits behave."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from serve_helpers import prompt, reference_tokens
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters_core.multi import MultiAdapterModel
from server.app import create_app
from server.settings import Settings

NEW = 6


@pytest.fixture(scope="module")
def client(llama_dir: Path, causal_adapters: dict[str, Path]) -> Iterator[TestClient]:
    adapters = [f"{name}={path}" for name, path in causal_adapters.items()]
    app = create_app(Settings(base_model=str(llama_dir), adapters=adapters, max_batch_size=8))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def oracle(llama_dir: Path, causal_adapters: dict[str, Path]) -> tuple[MultiAdapterModel, object]:
    multi = MultiAdapterModel(AutoModelForCausalLM.from_pretrained(llama_dir))
    for name, path in causal_adapters.items():
        multi.add(name, str(path))
    return multi, AutoTokenizer.from_pretrained(llama_dir)


def _generate(client: TestClient, text: str, adapter: str | None, **params: object) -> dict:
    body = {
        "inputs": text,
        "parameters": {"adapter_id": adapter, "max_new_tokens": NEW, "details": True, **params},
    }
    response = client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_every_method_matches_its_greedy_tokens_alone(client, oracle, causal_adapters) -> None:
    multi, tok = oracle
    for i, name in enumerate([None, *causal_adapters]):
        text = prompt(i)
        out = _generate(client, text, name)
        got = [t["id"] for t in out["details"]["tokens"]]
        assert got == reference_tokens(multi, tok, text, name, NEW)[: len(got)], name
        assert out["details"]["finish_reason"] in ("length", "eos_token")


def test_stream_yields_the_same_tokens(client) -> None:
    text = prompt(42)
    plain = _generate(client, text, "lora4")
    body = {"inputs": text, "parameters": {"adapter_id": "lora4", "max_new_tokens": NEW}}
    with client.stream("POST", "/generate_stream", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    assert [e["token"]["id"] for e in events] == [t["id"] for t in plain["details"]["tokens"]]
    assert all(e["generated_text"] is None for e in events[:-1])
    assert events[-1]["generated_text"] == plain["generated_text"]


def test_seeded_sampling_is_reproducible(client) -> None:
    params = {"do_sample": True, "temperature": 0.9, "top_k": 50, "top_p": 0.95, "seed": 1234}
    a = _generate(client, prompt(7), "dora", **params)
    b = _generate(client, prompt(7), "dora", **params)
    assert a["generated_text"] == b["generated_text"]
    assert a["details"]["seed"] == 1234


def test_stop_sequence_ends_generation(client) -> None:
    first = _generate(client, prompt(3), None)
    word = first["generated_text"].split()[1]
    out = _generate(client, prompt(3), None, stop=[word])
    assert out["details"]["finish_reason"] == "stop_sequence"
    assert out["generated_text"].endswith(word)


def test_openai_completions_and_chat(client, oracle) -> None:
    multi, tok = oracle
    text = prompt(11)
    expected = tok.decode(reference_tokens(multi, tok, text, "ia3", NEW), skip_special_tokens=True)
    body = {"model": "ia3", "prompt": text, "max_tokens": NEW, "temperature": 0}
    out = client.post("/v1/completions", json=body).json()
    assert out["object"] == "text_completion"
    assert out["choices"][0]["text"] == expected
    assert out["usage"]["completion_tokens"] <= NEW
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        lines = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "[DONE]"
    assert "".join(json.loads(x)["choices"][0]["text"] for x in lines[:-1]) == expected
    chat = {
        "model": "ia3",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": NEW,
        "temperature": 0,
    }
    out = client.post("/v1/chat/completions", json=chat).json()
    assert out["choices"][0]["message"] == {"role": "assistant", "content": expected}
    base_name = client.get("/v1/models").json()["data"][0]["id"]
    base = client.post("/v1/completions", json={**body, "model": base_name}).json()
    assert base["choices"][0]["text"] == tok.decode(
        reference_tokens(multi, tok, text, None, NEW), skip_special_tokens=True
    )


def test_models_lists_base_and_adapters(client, causal_adapters) -> None:
    data = client.get("/v1/models").json()["data"]
    assert data[0]["type"] == "base"
    cards = {c["id"]: c for c in data[1:]}
    assert set(cards) == set(causal_adapters)
    assert cards["lora8"]["rank"] == 8 and cards["lora8"]["type"] == "LORA"
    assert cards["ia3"]["rank"] is None and cards["ia3"]["resident"] == "cpu"


def test_ops_routes(client) -> None:
    _generate(client, prompt(1), None)
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200
    text = client.get("/metrics").text
    for name in ("swapyard_requests_total", "swapyard_time_to_first_token_seconds", "swapyard_batch_size"):
        assert name in text
    assert 'route="/generate",status="200"' in text


def test_reported_logprobs_are_the_models(client, oracle) -> None:
    multi, tok = oracle
    text = prompt(5)
    out = _generate(client, text, None)
    ids = torch.tensor([tok(text)["input_ids"]])
    logits = multi(input_ids=ids, attention_mask=torch.ones_like(ids), adapter_names=[None]).logits[0, -1]
    first = out["details"]["tokens"][0]
    assert abs(first["logprob"] - float(torch.log_softmax(logits, -1)[first["id"]])) < 1e-4
