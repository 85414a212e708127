"""Structured output (issue 17.3): OpenAI `response_format` (json_object, json_schema) and TGI `grammar` (json,
regex) through llguidance, applied per row as a batched mask. The base is a random tiny Llama with a byte-level
tokenizer (tests/server/bytelevel.py): left alone it writes noise, so valid output shows the mask at work."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator

import jsonschema
import pytest
from bytelevel import save_bytelevel_base
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings

SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "size": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["ok", "color", "size"],
    "additionalProperties": False,
}
REGEX = r"[0-9]{3}-[a-z]{2}(!|\?)"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    base = save_bytelevel_base(tmp_path_factory.mktemp("bytelevel"))
    app = create_app(Settings(base_model=str(base), max_batch_size=8))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _chat(client: TestClient, **body: object) -> dict:
    base = {"model": client.get("/v1/models").json()["data"][0]["id"], "max_tokens": 120}
    messages = [{"role": "user", "content": "give me json"}]
    response = client.post("/v1/chat/completions", json={**base, "messages": messages, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_unconstrained_output_is_not_json(client) -> None:
    """The control: without a grammar this model's output does not parse."""
    for seed in range(3):
        text = _chat(client, seed=seed, max_tokens=30)["choices"][0]["message"]["content"]
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)


@pytest.mark.parametrize("seed", range(4))
def test_json_schema_output_validates(client, seed: int) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA}}
    out = _chat(client, seed=seed, temperature=1.0, response_format=fmt)["choices"][0]
    assert out["finish_reason"] == "stop", out  # the mask ends it: EOS once the object is complete
    jsonschema.validate(json.loads(out["message"]["content"]), SCHEMA)


def test_json_object_output_is_an_object_or_honestly_cut(client) -> None:
    finished = 0
    for seed in (0, 3, 4, 5):
        out = _chat(client, seed=seed, response_format={"type": "json_object"}, max_tokens=260)["choices"][0]
        text = out["message"]["content"]
        assert text.startswith("{")
        if out["finish_reason"] == "stop":
            assert isinstance(json.loads(text), dict)
            finished += 1
        else:  # free-form strings can run past max_tokens: then it says "length"
            assert out["finish_reason"] == "length"
    assert finished >= 1


def test_streamed_json_schema_output_validates(client) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA}}
    body = {"seed": 9, "response_format": fmt, "stream": True}
    base = {"model": client.get("/v1/models").json()["data"][0]["id"], "max_tokens": 120}
    messages = [{"role": "user", "content": "give me json"}]
    with client.stream("POST", "/v1/chat/completions", json={**base, "messages": messages, **body}) as r:
        chunks = [json.loads(x[5:]) for x in r.iter_lines() if x.startswith("data:") and "[DONE]" not in x]
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize("seed", range(3))
def test_tgi_grammar_json_and_regex(client, seed: int) -> None:
    def generate(grammar: dict) -> dict:
        params = {"max_new_tokens": 120, "do_sample": True, "seed": seed, "grammar": grammar, "details": True}
        response = client.post("/generate", json={"inputs": "answer:", "parameters": params})
        assert response.status_code == 200, response.text
        return response.json()

    as_json = generate({"type": "json", "value": SCHEMA})
    jsonschema.validate(json.loads(as_json["generated_text"]), SCHEMA)
    assert as_json["details"]["finish_reason"] == "eos_token"
    as_text = generate({"type": "json", "value": json.dumps(SCHEMA)})  # TGI also takes the schema's text
    jsonschema.validate(json.loads(as_text["generated_text"]), SCHEMA)
    regex = generate({"type": "regex", "value": REGEX})
    assert re.fullmatch(REGEX, regex["generated_text"]), regex


def test_a_guided_row_does_not_change_its_batch_mates(client) -> None:
    """Masks are per row: a plain greedy request gives the same text next to guided ones."""
    plain = {"inputs": "hello", "parameters": {"max_new_tokens": 12}}
    alone = client.post("/generate", json=plain).json()["generated_text"]
    engine = client.app.state.swapyard.engine
    grammar = {"type": "regex", "value": REGEX}
    guided = {"inputs": "hello", "parameters": {"max_new_tokens": 60, "grammar": grammar}}
    results: dict[str, object] = {}

    def post(name: str, body: dict) -> None:
        results[name] = client.post("/generate", json=body).json()

    with engine.hold() as hold:
        threads = [
            threading.Thread(target=post, args=("g1", guided)),
            threading.Thread(target=post, args=("plain", plain)),
            threading.Thread(target=post, args=("g2", guided)),
        ]
        for t in threads:
            t.start()
        hold.wait_queued(3)
    for t in threads:
        t.join()
    assert results["plain"]["generated_text"] == alone  # type: ignore[index]
    assert re.fullmatch(REGEX, results["g1"]["generated_text"])  # type: ignore[index]


def test_bad_grammars_are_422_naming_the_problem(client) -> None:
    bad_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}
    r = client.post(
        "/v1/chat/completions",
        json={"model": "x", "messages": [{"role": "user", "content": "a"}], "response_format": bad_schema},
    )
    assert r.status_code in (404, 422)  # the model name is checked too; use the real one below
    model = client.get("/v1/models").json()["data"][0]["id"]
    for fmt, needle in (
        (bad_schema, "cannot be used for structured output"),
        ({"type": "json_schema"}, "json_schema needs"),
        ({"type": "yaml"}, "'yaml' is not one of"),
    ):
        body = {"model": model, "messages": [{"role": "user", "content": "a"}], "response_format": fmt}
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 422 and needle in r.json()["error"], (fmt, r.text)
    regex = client.post(
        "/generate", json={"inputs": "a", "parameters": {"grammar": {"type": "regex", "value": "(["}}}
    )
    assert regex.status_code == 422 and "regex grammar" in regex.json()["error"]
    both = {"model": model, "messages": [{"role": "user", "content": "a"}], "ignore_eos": True}
    r = client.post("/v1/chat/completions", json={**both, "response_format": {"type": "json_object"}})
    assert r.status_code == 422 and "ignore_eos" in r.json()["error"]


def test_a_tokenizer_llguidance_cannot_read_is_a_422(serve, llama_dir) -> None:
    """The served tests' word-level tokenizer ("w0".."w251", no decoder): the request says so, and the
    server goes on serving."""
    with serve(base_model=str(llama_dir)) as other:
        body = {"inputs": "w1", "parameters": {"grammar": {"type": "json", "value": SCHEMA}}}
        r = other.post("/generate", json=body)
        assert r.status_code == 422 and "cannot read this base model's tokenizer" in r.json()["error"], r.text
        assert other.post("/generate", json={"inputs": "w1"}).status_code == 200
