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
        want = reference_tokens(multi, tok, text, name, NEW)
        assert got == want, name  # the whole sequence: an empty or short answer fails
        ended = want[-1] == tok.eos_token_id
        assert out["details"]["finish_reason"] == ("eos_token" if ended else "length"), name


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


# -- TGI's and OpenAI's documented parameters: honoured, or a 422 that names them ---------------------------
def test_tgi_return_full_text_prepends_the_prompt(client) -> None:
    text = prompt(21)
    plain = _generate(client, text, "lora4")
    full = _generate(client, text, "lora4", return_full_text=True)
    assert full["generated_text"] == text + plain["generated_text"]
    assert full["details"]["tokens"] == plain["details"]["tokens"]
    body = {
        "inputs": text,
        "parameters": {"adapter_id": "lora4", "max_new_tokens": NEW, "return_full_text": True},
    }
    with client.stream("POST", "/generate_stream", json=body) as response:
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    assert events[-1]["generated_text"] == full["generated_text"]


def test_tgi_truncate_keeps_the_last_tokens(client) -> None:
    words = prompt(22, length=6).split()
    truncated = _generate(client, " ".join(words), "lora8", truncate=2)
    alone = _generate(client, " ".join(words[-2:]), "lora8")
    assert truncated["details"]["tokens"] == alone["details"]["tokens"]
    assert truncated["generated_text"] == alone["generated_text"]
    assert _generate(client, " ".join(words), "lora8")["details"]["tokens"] != alone["details"]["tokens"]


TGI_UNSUPPORTED = {  # typical_p, top_n_tokens, best_of, grammar: honoured (test_api_tgi_sampling.py)
    "watermark": True,
    "frequency_penalty": 0.5,
}
TGI_DEFAULTS = {
    "typical_p": None,
    "watermark": False,
    "top_n_tokens": 0,
    "decoder_input_details": False,
    "best_of": 1,
    "frequency_penalty": 0.0,
    "grammar": None,
    "truncate": None,
    "return_full_text": False,
}


@pytest.mark.parametrize("route", ["/generate", "/generate_stream"])
def test_tgi_parameters_not_supported_yet_are_named(client, route) -> None:
    for name, value in TGI_UNSUPPORTED.items():
        response = client.post(route, json={"inputs": "w1", "parameters": {name: value}})
        assert response.status_code == 422, (name, response.text)
        assert response.json()["error_type"] == "unsupported" and f"`{name}`" in response.json()["error"]
    both = client.post(
        route, json={"inputs": "w1", "parameters": {"watermark": True, "frequency_penalty": 1}}
    )
    assert "`frequency_penalty`, `watermark` are not supported" in both.json()["error"]
    at_defaults = {"inputs": "w1", "parameters": {"max_new_tokens": 2, **TGI_DEFAULTS}}
    assert client.post(route, json=at_defaults).status_code == 200


def test_tgi_stream_flag_must_match_the_route(client) -> None:
    for route, stream in (("/generate", True), ("/generate_stream", False)):
        response = client.post(route, json={"inputs": "w1", "stream": stream})
        assert response.status_code == 422 and "`stream" in response.json()["error"], route
    assert client.post("/generate", json={"inputs": "w1", "stream": False}).status_code == 200


OPENAI_UNSUPPORTED = {
    "both": {"frequency_penalty": 0.5, "presence_penalty": -1, "logit_bias": {"5": 10}},
    "/v1/completions": {"suffix": "w3"},  # logprobs, best_of: honoured (test_api_logprobs.py, ...)
    "/v1/chat/completions": {  # logprobs, top_logprobs, response_format: honoured
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "auto",
        "functions": [{"name": "f"}],
        "function_call": "auto",
        "modalities": ["text", "audio"],
        "audio": {"voice": "alloy", "format": "wav"},
        "prediction": {"type": "content", "content": "w1"},
        "reasoning_effort": "high",
        "verbosity": "low",
        "web_search_options": {},
        "store": True,
        "service_tier": "flex",
    },
}
OPENAI_DEFAULTS = {
    "both": {"frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}, "user": "u-1"},
    "/v1/completions": {"logprobs": None, "suffix": None, "best_of": 1, "echo": False},
    "/v1/chat/completions": {
        "logprobs": False,
        "top_logprobs": 0,
        "response_format": {"type": "text"},
        "tools": [],
        "tool_choice": "none",
        "parallel_tool_calls": True,
        "modalities": ["text"],
        "store": False,
        "service_tier": "auto",
        "metadata": {"team": "a"},
        "prompt_cache_key": "k",
        "safety_identifier": "s",
    },
}


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_openai_parameters_are_honoured_or_named(client, route) -> None:
    """They were dropped without a word (`extra="ignore"`): a client asking for tools or logprobs got an
    answer without them."""
    base: dict = {"model": "lora4", "max_tokens": 2}
    base |= (
        {"prompt": "w1"} if route == "/v1/completions" else {"messages": [{"role": "user", "content": "w1"}]}
    )
    for name, value in {**OPENAI_UNSUPPORTED["both"], **OPENAI_UNSUPPORTED[route]}.items():
        response = client.post(route, json={**base, name: value})
        assert response.status_code == 422, (name, response.text)
        assert response.json()["error_type"] == "unsupported" and f"`{name}`" in response.json()["error"]
    unknown = client.post(route, json={**base, "no_such_parameter": 1})
    assert unknown.status_code == 422 and "no_such_parameter" in unknown.json()["error"]
    defaults = {**base, **OPENAI_DEFAULTS["both"], **OPENAI_DEFAULTS[route]}
    assert client.post(route, json=defaults).status_code == 200, defaults
    options = client.post(route, json={**base, "stream_options": {"include_usage": True}})
    assert options.status_code == 422 and "stream: true" in options.json()["error"]


def test_openai_echo_and_stream_usage(client) -> None:
    text = prompt(23)
    body = {"model": "ia3", "prompt": text, "max_tokens": NEW, "temperature": 0}
    plain = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    echoed = client.post("/v1/completions", json={**body, "echo": True}).json()["choices"][0]["text"]
    assert echoed == text + plain
    stream = {**body, "echo": True, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/completions", json=stream) as response:
        lines = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(x) for x in lines[:-1]]
    assert chunks[0]["choices"][0]["text"] == text
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == echoed
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] <= NEW
    assert chunks[-1]["usage"]["prompt_tokens"] == len(text.split())
