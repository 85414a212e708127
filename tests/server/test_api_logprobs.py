"""Logprobs (issue 17.1) against the model's own log-softmax: OpenAI chat `logprobs`/`top_logprobs`,
completions `logprobs: k`, TGI `details` and `top_n_tokens`, greedy and sampled. Every generated token's
logprob is compared with `log_softmax` of the adapter's logits at that position (the whole sequence re-run
by MultiAdapterModel, teacher-forced), and the top-k ids with its `topk`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from serve_helpers import prompt
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters_core.multi import MultiAdapterModel
from server.app import create_app
from server.settings import Settings

ATOL = 1e-4  # the engine's batched, cached forward against one uncached forward: float32 rounding only


@pytest.fixture(scope="module")
def client(llama_dir: Path, causal_adapters: dict[str, Path]) -> Iterator[TestClient]:
    adapters = [f"{n}={causal_adapters[n]}" for n in ("lora4", "prompt")]
    app = create_app(Settings(base_model=str(llama_dir), adapters=adapters, max_batch_size=8))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def oracle(llama_dir: Path, causal_adapters: dict[str, Path]):
    multi = MultiAdapterModel(AutoModelForCausalLM.from_pretrained(llama_dir))
    for name in ("lora4", "prompt"):
        multi.add(name, str(causal_adapters[name]))
    return multi, AutoTokenizer.from_pretrained(llama_dir)


def _reference(oracle, prompt_ids: list[int], generated: list[int], adapter: str | None) -> torch.Tensor:
    """(len(generated), V) log-softmax of the model's logits at each generated position."""
    multi, _ = oracle
    ids = torch.tensor([prompt_ids + generated])
    with torch.no_grad():
        logits = multi(input_ids=ids, attention_mask=torch.ones_like(ids), adapter_names=[adapter]).logits[0]
    return torch.log_softmax(logits[len(prompt_ids) - 1 : -1].float(), dim=-1)


def _check(ref: torch.Tensor, ids: list[int], logprobs: list[float], tops: list[list[tuple[int, float]]]):
    assert len(ids) == len(logprobs) == ref.shape[0] > 1
    for t, (token, lp, top) in enumerate(zip(ids, logprobs, tops)):
        assert lp == pytest.approx(float(ref[t, token]), abs=ATOL), t
        if top:
            want = ref[t].topk(len(top))
            assert [i for i, _ in top] == want.indices.tolist(), t
            assert [v for _, v in top] == pytest.approx(want.values.tolist(), abs=ATOL), t


@pytest.mark.parametrize("adapter", [None, "lora4", "prompt"])
@pytest.mark.parametrize("sampled", [False, True])
def test_tgi_details_and_top_n_tokens_are_the_models_log_softmax(client, oracle, adapter, sampled) -> None:
    text = prompt(31)
    params = {"adapter_id": adapter, "max_new_tokens": 6, "details": True, "top_n_tokens": 3}
    if sampled:  # logprobs are of the raw distribution, whatever the sampling parameters (vLLM's default)
        params |= {"do_sample": True, "temperature": 0.7, "top_k": 20, "repetition_penalty": 1.3, "seed": 4}
    response = client.post("/generate", json={"inputs": text, "parameters": params})
    assert response.status_code == 200, response.text
    details = response.json()["details"]
    assert details["prefill"] == []
    tokens = details["tokens"]
    ids = [t["id"] for t in tokens]
    tops = [[(x["id"], x["logprob"]) for x in step] for step in details["top_tokens"]]
    assert all(len(step) == 3 for step in tops)
    _, tok = oracle
    _check(
        _reference(oracle, tok(text)["input_ids"], ids, adapter), ids, [t["logprob"] for t in tokens], tops
    )


def test_tgi_stream_carries_top_tokens(client, oracle) -> None:
    text = prompt(32)
    params = {"max_new_tokens": 4, "details": True, "top_n_tokens": 2}
    plain = client.post("/generate", json={"inputs": text, "parameters": params}).json()["details"]
    with client.stream("POST", "/generate_stream", json={"inputs": text, "parameters": params}) as response:
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    assert [e["top_tokens"] for e in events] == plain["top_tokens"]
    assert [e["token"] for e in events] == plain["tokens"]


@pytest.mark.parametrize("sampled", [False, True])
def test_chat_logprobs_and_top_logprobs_are_the_models(client, oracle, sampled) -> None:
    _, tok = oracle
    messages = [{"role": "user", "content": prompt(33)}]
    body = {"model": "lora4", "messages": messages, "max_tokens": 5, "logprobs": True, "top_logprobs": 4}
    body |= {"temperature": 0.9, "seed": 3} if sampled else {"temperature": 0}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    content = response.json()["choices"][0]["logprobs"]["content"]
    ids = tok.convert_tokens_to_ids([c["token"] for c in content])
    assert all(c["bytes"] == list(c["token"].encode()) for c in content)
    tops = [
        [(tok.convert_tokens_to_ids(x["token"]), x["logprob"]) for x in c["top_logprobs"]] for c in content
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    _check(_reference(oracle, prompt_ids, ids, "lora4"), ids, [c["logprob"] for c in content], tops)
    # Streamed: the same entries, one chunk per token.
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as stream:
        lines = [line[5:].strip() for line in stream.iter_lines() if line.startswith("data:")]
    chunks = [json.loads(x) for x in lines[:-1]]
    streamed = [
        e for c in chunks if c["choices"][0]["logprobs"] for e in c["choices"][0]["logprobs"]["content"]
    ]
    assert streamed == content


def test_completions_logprobs_k_are_the_models(client, oracle) -> None:
    _, tok = oracle
    text = prompt(34)
    body = {"model": "lora4", "prompt": text, "max_tokens": 5, "temperature": 0, "logprobs": 3}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    logprobs = choice["logprobs"]
    ids = tok.convert_tokens_to_ids(logprobs["tokens"])
    ref = _reference(oracle, tok(text)["input_ids"], ids, "lora4")
    tops = []
    for t, alternatives in enumerate(logprobs["top_logprobs"]):
        # OpenAI: the k most likely plus the sampled token (greedy: the sampled one is the best).
        want = ref[t].topk(3)
        assert set(tok.convert_tokens_to_ids(list(alternatives))) == set(want.indices.tolist())
        tops.append([(tok.convert_tokens_to_ids(k), v) for k, v in alternatives.items()])
    _check(ref, ids, logprobs["token_logprobs"], [sorted(t, key=lambda x: -x[1]) for t in tops])
    # text_offset: where each token's text starts in the returned text.
    assert logprobs["text_offset"][0] == 0
    pieces = [choice["text"][a:b] for a, b in zip(logprobs["text_offset"], logprobs["text_offset"][1:])]
    assert [p.strip() for p in pieces] == logprobs["tokens"][:-1]


def test_top_logprobs_without_logprobs_is_refused_with_the_reason(client) -> None:
    """(Prompt logprobs, `echo` + `logprobs` and `decoder_input_details`: test_api_prompt_logprobs.py.)"""
    bare = client.post(
        "/v1/chat/completions",
        json={"model": "lora4", "messages": [{"role": "user", "content": "w1"}], "top_logprobs": 2},
    )
    assert bare.status_code == 422 and "logprobs: true" in bare.json()["error"]
