"""Prompt logprobs (issue 17.1): OpenAI completions `echo` + `logprobs` and TGI `decoder_input_details`,
against the model's own log-softmax over the whole prompt (MultiAdapterModel run directly, one forward), with
chunked prefill forced (`--max-batch-tokens` 8: a prompt spans several steps) and under adapters (LoRA, and
prompt tuning, whose virtual positions open the stream). A request that wants them takes no prefix-cache hit.
Streamed completions carry them in each choice's first chunk (vLLM); TGI's stream has no place for them (422).
An encoder-decoder (T5) refuses them with a 422."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from app_hooks import paged_client
from fastapi.testclient import TestClient
from serve_helpers import prompt
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters_core.multi import MultiAdapterModel

ATOL = 1e-4  # the engine's chunked, paged forward against one uncached forward: float32 rounding only
BATCH_TOKENS = 8


@pytest.fixture(scope="module")
def served(llama_dir: Path, causal_adapters: dict[str, Path]) -> Iterator[tuple[TestClient, Any, list]]:
    adapters = [f"{n}={causal_adapters[n]}" for n in ("lora4", "prompt")]
    settings = dict(
        base_model=str(llama_dir), adapters=adapters, max_batch_size=8, max_batch_tokens=BATCH_TOKENS
    )
    with paged_client(**settings) as served:
        yield served


@pytest.fixture(scope="module")
def oracle(llama_dir: Path, causal_adapters: dict[str, Path]):
    multi = MultiAdapterModel(AutoModelForCausalLM.from_pretrained(llama_dir))
    for name in ("lora4", "prompt"):
        multi.add(name, str(causal_adapters[name]))
    return multi, AutoTokenizer.from_pretrained(llama_dir)


def _reference(oracle, ids: list[int], adapter: str | None) -> torch.Tensor:
    """(len(ids) - 1, V): log-softmax of the logits predicting prompt tokens 1.. (one forward, no cache)."""
    multi, _ = oracle
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = multi(input_ids=x, attention_mask=torch.ones_like(x), adapter_names=[adapter]).logits[0]
    return torch.log_softmax(logits[: len(ids) - 1].float(), dim=-1)


def _check(ref: torch.Tensor, ids: list[int], logprobs: list[float | None], tops: list[Any]) -> None:
    assert len(logprobs) == len(ids) == ref.shape[0] + 1 > BATCH_TOKENS  # the prompt spans several chunks
    assert logprobs[0] is None
    for i in range(1, len(ids)):
        assert logprobs[i] == pytest.approx(float(ref[i - 1, ids[i]]), abs=ATOL), i
        if tops is not None:
            want = ref[i - 1].topk(len(tops[i]))
            assert [t for t, _ in tops[i]] == want.indices.tolist(), i
            assert [v for _, v in tops[i]] == pytest.approx(want.values.tolist(), abs=ATOL), i


def _counter(engine: Any, name: str) -> float:
    return float(getattr(engine.metrics, name)._value.get())


@pytest.mark.parametrize("adapter", [None, "lora4", "prompt"])
def test_tgi_decoder_input_details_are_the_models_log_softmax(served, oracle, adapter) -> None:
    client, _, plans = served
    text = prompt(23, 14)
    ids = oracle[1](text)["input_ids"]
    params = {"adapter_id": adapter, "max_new_tokens": 2, "details": True, "decoder_input_details": True}
    before = len(plans)
    response = client.post("/generate", json={"inputs": text, "parameters": params})
    assert response.status_code == 200, response.text
    prefill = response.json()["details"]["prefill"]
    assert [t["id"] for t in prefill] == ids
    assert any(c.all_logits and c.start > 0 for p in plans[before:] for c in p.chunks), "no chunked prefill"
    _check(_reference(oracle, ids, adapter), ids, [t.get("logprob") for t in prefill], None)


@pytest.mark.parametrize("adapter", [None, "lora4", "prompt"])
def test_completions_echo_logprobs_are_the_models_log_softmax_with_top_k(served, oracle, adapter) -> None:
    client, _, _ = served
    tok = oracle[1]
    text = prompt(19, 12)
    ids = tok(text)["input_ids"]
    payload = {"model": adapter or "base", "prompt": text, "max_tokens": 3, "echo": True, "logprobs": 2}
    if adapter is None:
        payload["model"] = client.get("/v1/models").json()["data"][0]["id"]
    response = client.post("/v1/completions", json=payload)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["text"].startswith(text)
    lp = choice["logprobs"]
    n = len(ids)
    assert len(lp["tokens"]) == n + 3 and lp["top_logprobs"][0] is None
    assert lp["tokens"][:n] == [tok.convert_ids_to_tokens(i) for i in ids]
    tops = [None] + [
        sorted(((tok.convert_tokens_to_ids(t), v) for t, v in top.items()), key=lambda e: -e[1])[:2]
        for top in lp["top_logprobs"][1:n]
    ]
    ref = _reference(oracle, ids, adapter)
    _check(ref, ids, lp["token_logprobs"][:n], tops)


def test_prompt_logprobs_take_no_prefix_cache_hit(served, oracle) -> None:
    client, engine, plans = served
    text = prompt(41, 40)
    ids = oracle[1](text)["input_ids"]
    plain = {"inputs": text, "parameters": {"adapter_id": "lora4", "max_new_tokens": 2}}
    assert client.post("/generate", json=plain).status_code == 200  # its full blocks join the prefix cache
    hits = _counter(engine, "prefix_cache_hits")
    assert client.post("/generate", json=plain).status_code == 200
    assert _counter(engine, "prefix_cache_hits") > hits, "the same prompt missed its own prefix"
    hits, before = _counter(engine, "prefix_cache_hits"), len(plans)
    params = {**plain["parameters"], "details": True, "decoder_input_details": True}
    response = client.post("/generate", json={"inputs": text, "parameters": params})
    assert response.status_code == 200, response.text
    assert _counter(engine, "prefix_cache_hits") == hits, "prompt logprobs were served from cached blocks"
    computed = sum(len(c.tokens) for p in plans[before:] for c in p.chunks if c.all_logits)
    assert computed == len(ids)  # every prompt position ran, none was skipped
    prefill = response.json()["details"]["prefill"]
    _check(_reference(oracle, ids, "lora4"), ids, [t.get("logprob") for t in prefill], None)


@pytest.mark.parametrize("adapter", [None, "prompt"])
def test_streamed_echo_logprobs_come_first_and_are_the_models_log_softmax(served, oracle, adapter) -> None:
    """Streamed `echo` + `logprobs` (vLLM's shape): each choice's first chunk is the prompt with its logprobs,
    exact as the non-streamed ones; then one chunk per token, its `text_offset` counted from the prompt's
    start. Two choices (`n`: the second forks the first's prompt) both get the prompt's chunk."""
    client, _, _ = served
    tok = oracle[1]
    text = prompt(31, 12)
    ids = tok(text)["input_ids"]
    model = adapter or client.get("/v1/models").json()["data"][0]["id"]
    body = {"model": model, "prompt": text, "max_tokens": 3, "temperature": 0, "echo": True, "logprobs": 2}
    plain = client.post("/v1/completions", json=body)
    assert plain.status_code == 200, plain.text
    with client.stream("POST", "/v1/completions", json={**body, "n": 2, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        lines = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line)["choices"][0] for line in lines[:-1]]
    ref = _reference(oracle, ids, adapter)
    want = plain.json()["choices"][0]
    for index in (0, 1):
        mine = [c for c in chunks if c["index"] == index]
        first = mine[0]["logprobs"]
        assert mine[0]["text"] == text and first["tokens"] == [tok.convert_ids_to_tokens(i) for i in ids]
        tops = [None] + [
            sorted(((tok.convert_tokens_to_ids(t), v) for t, v in top.items()), key=lambda e: -e[1])[:2]
            for top in first["top_logprobs"][1:]
        ]
        _check(ref, ids, first["token_logprobs"], tops)
        assert "".join(c["text"] for c in mine) == want["text"]
        joined = {key: [v for c in mine for v in c["logprobs"][key]] for key in first}
        for key in ("tokens", "text_offset"):  # the same tokens and offsets as unstreamed
            assert joined[key] == want["logprobs"][key], key
        # and the same logprobs, up to the rounding of another batch (two rows, other chunks)
        assert joined["token_logprobs"] == pytest.approx(want["logprobs"]["token_logprobs"], abs=ATOL)
        for got, expected in zip(joined["top_logprobs"], want["logprobs"]["top_logprobs"]):
            assert got == (None if expected is None else pytest.approx(expected, abs=ATOL))


def test_tgi_refuses_prompt_logprobs_when_streaming(served) -> None:
    """TGI's stream events have no field for the prompt's tokens (its StreamDetails has none): a clear 422."""
    client, _, _ = served
    params = {"max_new_tokens": 2, "details": True, "decoder_input_details": True}
    response = client.post("/generate_stream", json={"inputs": prompt(5), "parameters": params})
    assert response.status_code == 422 and "streaming" in response.json()["error"]
    assert "/generate" in response.json()["error"]


def test_an_encoder_decoder_refuses_prompt_logprobs_clearly(t5_setup, serve) -> None:
    """T5's prompt is its encoder's input, which it does not score."""
    base_dir, _ = t5_setup
    with serve(base_model=str(base_dir)) as client:
        params = {"max_new_tokens": 2, "details": True, "decoder_input_details": True}
        response = client.post("/generate", json={"inputs": "translate: hello", "parameters": params})
        assert response.status_code == 422, response.text
        assert "encoder" in response.json()["error"] and "drop" in response.json()["error"]
