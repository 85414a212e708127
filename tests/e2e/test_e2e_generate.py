"""`swapyard serve` as a real process: a tiny Llama with PEFT-made adapters of every method.

Many concurrent requests with different adapters each get exactly the greedy tokens their adapter gives
alone; streaming equals non-streaming; OpenAI routes; a seeded request is the same alone and in a busy batch;
bad input gets its status and the server keeps serving; a full queue is 429; a dropped stream frees its row.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from serve_helpers import make_causal_adapters, prompt, reference_tokens, save_base
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters_core.multi import MultiAdapterModel

pytestmark = pytest.mark.e2e
NEW = 8
TIMEOUT = httpx.Timeout(60.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, server_factory):
    root = tmp_path_factory.mktemp("e2e-causal")
    base = save_base("llama", root / "base")
    adapters = make_causal_adapters(base, root / "adapters")
    # Half from --adapter flags, half from --adapter-dir: both ways of loading are exercised.
    names = sorted(adapters)
    flags = [arg for name in names[:4] for arg in ("--adapter", f"{name}={adapters[name]}")]
    rest = root / "dir"
    rest.mkdir()
    for name in names[4:]:
        (rest / name).symlink_to(adapters[name])
    url = server_factory(
        [
            "--base-model", str(base), *flags, "--adapter-dir", str(rest),
            "--max-batch-size", "8", "--max-queued-requests", "24", "--max-input-tokens", "32",
            "--max-total-tokens", "200", "--max-new-tokens-limit", "150", "--max-stop-sequences", "2",
            "--max-request-bytes", "8192",
        ]
    )  # fmt: skip
    multi = MultiAdapterModel(AutoModelForCausalLM.from_pretrained(base))
    for name, path in adapters.items():
        multi.add(name, str(path))
    return url, names, multi, AutoTokenizer.from_pretrained(base)


async def _post_all(url: str, bodies: list[tuple[str, dict]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
        return await asyncio.gather(*(client.post(route, json=body) for route, body in bodies))


def _body(text: str, adapter: str | None, **params: object) -> dict:
    return {
        "inputs": text,
        "parameters": {"adapter_id": adapter, "max_new_tokens": NEW, "details": True, **params},
    }


def test_concurrent_mixed_adapters_match_each_alone(setup) -> None:
    url, names, multi, tok = setup
    cases = [(prompt(100 + i, length=3 + i % 5), ([None, *names])[i % (len(names) + 1)]) for i in range(20)]
    responses = asyncio.run(_post_all(url, [("/generate", _body(text, name)) for text, name in cases]))
    for (text, name), response in zip(cases, responses):
        assert response.status_code == 200, response.text
        got = [t["id"] for t in response.json()["details"]["tokens"]]
        assert got == reference_tokens(multi, tok, text, name, NEW)[: len(got)], (name, text)
    metrics = httpx.get(f"{url}/metrics").text
    assert "swapyard_batch_distinct_adapters_bucket" in metrics


def test_stream_equals_non_stream(setup) -> None:
    url, names, _, _ = setup
    for i, name in enumerate(names[:3]):
        body = _body(prompt(200 + i), name)
        plain = httpx.post(f"{url}/generate", json=body, timeout=TIMEOUT).json()
        with httpx.stream("POST", f"{url}/generate_stream", json=body, timeout=TIMEOUT) as response:
            events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
        assert [e["token"]["id"] for e in events] == [t["id"] for t in plain["details"]["tokens"]]
        assert events[-1]["generated_text"] == plain["generated_text"]


def test_openai_routes(setup) -> None:
    url, names, multi, tok = setup
    models = httpx.get(f"{url}/v1/models").json()["data"]
    assert {m["id"] for m in models[1:]} == set(names)
    text = prompt(300)
    expected = tok.decode(reference_tokens(multi, tok, text, "prefix", NEW), skip_special_tokens=True)
    body = {"model": "prefix", "prompt": text, "max_tokens": NEW, "temperature": 0}
    out = httpx.post(f"{url}/v1/completions", json=body, timeout=TIMEOUT).json()
    assert out["choices"][0]["text"] == expected
    chat = {"model": "prefix", "messages": [{"role": "user", "content": text}], "max_tokens": NEW, "temperature": 0,
            "stream": True}  # fmt: skip
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=chat, timeout=TIMEOUT) as response:
        chunks = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    assert chunks[-1] == "[DONE]"
    deltas = [json.loads(c)["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas[0]["role"] == "assistant"
    assert "".join(d.get("content", "") for d in deltas) == expected
    unknown = httpx.post(f"{url}/v1/completions", json={**body, "model": "nope"})
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]


def test_seeded_sample_same_alone_and_in_busy_batch(setup) -> None:
    url, names, _, _ = setup
    seeded = _body(prompt(400), "lora8", do_sample=True, temperature=1.0, top_p=0.95, seed=2024)
    seeded["parameters"]["max_new_tokens"] = 12
    alone = httpx.post(f"{url}/generate", json=seeded, timeout=TIMEOUT).json()
    noise = [
        ("/generate", _body(prompt(500 + i), names[i % len(names)], max_new_tokens=20)) for i in range(10)
    ]
    busy = asyncio.run(_post_all(url, [*noise[:5], ("/generate", seeded), *noise[5:]]))
    assert busy[5].json()["generated_text"] == alone["generated_text"]
    assert [t["id"] for t in busy[5].json()["details"]["tokens"]] == [
        t["id"] for t in alone["details"]["tokens"]
    ]


JSON = {"content-type": "application/json"}
BAD = [
    (dict(content=b'{"inputs": ', headers=JSON), 400),
    (dict(content=b'{"inputs": "\xc3\x28"}', headers=JSON), 400),
    (dict(json={"inputs": ["w1"]}), 422),
    (dict(json={"inputs": "w1", "parameters": {"max_new_tokens": "x"}}), 422),
    (dict(json={"inputs": ""}), 422),
    (dict(json={"inputs": "w1", "parameters": {"adapter_id": "nope"}}), 404),
    (dict(json={"inputs": " ".join(["w3"] * 40)}), 422),
    (dict(json={"inputs": "w1", "parameters": {"max_new_tokens": 151}}), 422),
    (dict(json={"inputs": "w1", "parameters": {"temperature": -0.5}}), 422),
    (dict(content=b'{"inputs": "w1", "parameters": {"top_p": NaN}}', headers=JSON), 422),
    (dict(json={"inputs": "w1", "parameters": {"repetition_penalty": 0}}), 422),
    (dict(json={"inputs": "w1", "parameters": {"stop": ["a", "b", "c"]}}), 422),
    (dict(json={"inputs": "w1 " * 4000}), 413),
]


def test_bad_input_each_status_then_still_serving(setup) -> None:
    url, _, _, _ = setup
    ok = _body("w1 w2", None, max_new_tokens=2)
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        for kwargs, status in BAD:
            response = client.post("/generate", **kwargs)
            assert response.status_code == status, (kwargs, response.text)
            assert set(response.json()) >= {"error", "error_type"}
            assert client.post("/generate", json=ok).status_code == 200


def test_queue_full_is_429_and_server_recovers(setup) -> None:
    url, _, _, _ = setup
    long = [("/generate", _body(prompt(600 + i), None, max_new_tokens=150)) for i in range(60)]
    started = time.monotonic()
    responses = asyncio.run(_post_all(url, long))
    statuses = [r.status_code for r in responses]
    assert 429 in statuses and 200 in statuses and set(statuses) <= {200, 429}, statuses
    assert {r.json()["error_type"] for r in responses if r.status_code == 429} == {"queue_full"}
    assert time.monotonic() - started < 60
    assert httpx.post(f"{url}/generate", json=_body("w1", None), timeout=TIMEOUT).status_code == 200


def _generated_tokens(url: str) -> float:
    line = next(
        x
        for x in httpx.get(f"{url}/metrics").text.splitlines()
        if x.startswith("swapyard_generated_tokens_total")
    )
    return float(line.split()[-1])


def test_dropped_stream_frees_its_row(setup) -> None:
    url, _, _, _ = setup
    before = _generated_tokens(url)
    body = _body(prompt(700), None, max_new_tokens=150, stop=[])
    body["parameters"]["details"] = False
    with httpx.stream("POST", f"{url}/generate_stream", json=body, timeout=TIMEOUT) as response:
        assert next(line for line in response.iter_lines() if line.startswith("data:"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "swapyard_running_rows 0.0" not in httpx.get(f"{url}/metrics").text:
        time.sleep(0.05)
    assert "swapyard_running_rows 0.0" in httpx.get(f"{url}/metrics").text
    dropped = _generated_tokens(url) - before
    # Left alone the same request runs all 150 tokens, so the dropped one really left early.
    full = httpx.post(f"{url}/generate", json={**body, "parameters": {**body["parameters"], "details": True}},
                      timeout=TIMEOUT).json()  # fmt: skip
    assert full["details"]["generated_tokens"] == 150
    assert dropped < 150
