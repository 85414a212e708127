"""Generation parameters (issue 17.6), each honoured: `stop_token_ids`, `ignore_eos`, `min_tokens`, `seed`,
`max_completion_tokens`, `user` (OpenAI + vLLM's extensions) and TGI's `typical_p`. (`stream_options.
include_usage`, `return_full_text`, `truncate` and stop strings: test_api_generate.py, test_api_choices.py.)

EOS is made observable with a second served base whose generation_config lists, besides `</s>`, the token the
model writes first for PROMPT: a real pattern (Llama 3 lists several EOS ids), and this one ends at once."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from serve_helpers import prompt
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.generation.logits_process import TypicalLogitsWarper

from server.app import create_app
from server.settings import Settings

PROMPT = prompt(51)


def _first_token(base: Path) -> int:
    model = AutoModelForCausalLM.from_pretrained(base)
    ids = torch.tensor([AutoTokenizer.from_pretrained(base)(PROMPT)["input_ids"]])
    with torch.no_grad():
        return int(model(input_ids=ids).logits[0, -1].argmax())


@pytest.fixture(scope="module")
def client(llama_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(base_model=str(llama_dir))), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def eos_first(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, int]]:
    base = tmp_path_factory.mktemp("eos-first") / "base"
    shutil.copytree(llama_dir, base)
    first = _first_token(llama_dir)
    GenerationConfig(eos_token_id=[2, first]).save_pretrained(base)
    with TestClient(create_app(Settings(base_model=str(base))), raise_server_exceptions=False) as c:
        yield c, first


def _complete(client: TestClient, **body: object) -> dict:
    base = {"model": client.get("/v1/models").json()["data"][0]["id"], "prompt": PROMPT, "max_tokens": 6}
    response = client.post("/v1/completions", json={"temperature": 0, "logprobs": 0, **base, **body})
    assert response.status_code == 200, response.text
    return response.json()


def _ids(client: TestClient, out: dict) -> list[int]:
    tok = AutoTokenizer.from_pretrained(client.app.state.swapyard.settings.base_model)
    return tok.convert_tokens_to_ids(out["choices"][0]["logprobs"]["tokens"])


def test_stop_token_ids_end_the_output_without_their_text(client) -> None:
    full = _complete(client)
    ids = _ids(client, full)
    k = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])  # a token seen first at position k
    out = _complete(client, stop_token_ids=[ids[k]])
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] == k + 1
    assert out["choices"][0]["text"] == _complete(client, max_tokens=k)["choices"][0]["text"]
    bad = client.post("/v1/completions", json={"model": "x", "prompt": "w1", "stop_token_ids": [10**6]})
    assert bad.status_code in (404, 422)
    model = client.get("/v1/models").json()["data"][0]["id"]
    bad = client.post("/v1/completions", json={"model": model, "prompt": "w1", "stop_token_ids": [10**6]})
    assert bad.status_code == 422 and "stop_token_ids [1000000]" in bad.json()["error"]


def test_an_extra_eos_in_generation_config_ends_the_output(eos_first) -> None:
    client, first = eos_first
    out = _complete(client)
    assert _ids(client, out) == [first]
    assert out["choices"][0]["finish_reason"] == "stop" and out["usage"]["completion_tokens"] == 1


def test_ignore_eos_goes_on_to_max_tokens(eos_first) -> None:
    client, first = eos_first
    out = _complete(client, ignore_eos=True)
    assert _ids(client, out)[0] == first
    assert out["choices"][0]["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 6


def test_min_tokens_masks_eos_until_reached(eos_first) -> None:
    client, first = eos_first
    out = _complete(client, min_tokens=3)
    ids = _ids(client, out)
    assert len(ids) >= 3 and first not in ids[:3]
    too_many = client.post("/v1/completions", json={**_base(client), "max_tokens": 2, "min_tokens": 3})
    assert too_many.status_code == 422 and "min_tokens 3" in too_many.json()["error"]


def _base(client: TestClient) -> dict:
    return {"model": client.get("/v1/models").json()["data"][0]["id"], "prompt": PROMPT}


def test_seed_reproduces_and_differs(client) -> None:
    def sample(seed: int) -> str:
        return _complete(client, temperature=1.5, seed=seed, max_tokens=8)["choices"][0]["text"]

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)


def test_max_completion_tokens_wins_over_max_tokens(client) -> None:
    out = _complete(client, max_tokens=5, max_completion_tokens=2)
    assert out["usage"]["completion_tokens"] == 2 and out["choices"][0]["finish_reason"] == "length"


def test_user_is_accepted_and_changes_nothing(client) -> None:
    assert _complete(client, user="alice")["choices"] == _complete(client)["choices"]


def test_stream_options_include_usage_counts_the_tokens(client) -> None:
    body = {**_base(client), "max_tokens": 4, "temperature": 0, "stream": True}
    with client.stream(
        "POST", "/v1/completions", json={**body, "stream_options": {"include_usage": True}}
    ) as r:
        lines = [x[5:].strip() for x in r.iter_lines() if x.startswith("data:")]
    assert json.loads(lines[-2])["usage"]["completion_tokens"] == 4
    with client.stream("POST", "/v1/completions", json=body) as r:
        lines = [x[5:].strip() for x in r.iter_lines() if x.startswith("data:")]
    assert all("usage" not in json.loads(x) for x in lines[:-1])


def test_tgi_typical_p_keeps_the_typical_token(client, llama_dir: Path) -> None:
    """A tiny mass keeps one token per step, the one whose surprisal is nearest the entropy: every seed
    gives the same output, and its first token is the one transformers' TypicalLogitsWarper keeps."""

    def generate(typical_p: float, seed: int) -> dict:
        params = {"typical_p": typical_p, "seed": seed, "max_new_tokens": 5, "details": True}
        response = client.post("/generate", json={"inputs": PROMPT, "parameters": params})
        assert response.status_code == 200, response.text
        return response.json()

    outs = [generate(1e-6, seed) for seed in range(3)]
    assert len({o["generated_text"] for o in outs}) == 1
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    ids = torch.tensor([AutoTokenizer.from_pretrained(llama_dir)(PROMPT)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1:].double()
    kept = torch.isfinite(TypicalLogitsWarper(1e-6)(ids, logits))[0].nonzero().flatten().tolist()
    assert kept == [outs[0]["details"]["tokens"][0]["id"]]
    assert kept[0] != int(logits.argmax())  # typical is not greedy here, so this shows the warper at work
    assert len({generate(0.95, seed)["generated_text"] for seed in range(4)}) > 1  # it turns sampling on
