"""/tokenize, /detokenize (vLLM's shapes), /v1/embeddings (OpenAI's) and per-adapter chat templates, through
the real app in process: a tiny Llama with PEFT LoRA adapters, two of them carrying their own chat template
(one in chat_template.jinja, one in tokenizer_config.json), and a tiny BERT with a classification LoRA.

Embeddings are compared with real PEFT's `output_hidden_states` for the row alone, pooled by hand."""

from __future__ import annotations

import base64
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import peft
import pytest
import torch
from app_hooks import AcquireCounter
from fastapi.testclient import TestClient
from serve_helpers import CHAT_TEMPLATE, prompt
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from server.app import create_app
from server.settings import Settings

TEMPLATE_A = (
    "{% for m in messages %}w1 {{ m['content'] }} w2 {% endfor %}{% if add_generation_prompt %}w3{% endif %}"
)
TEMPLATE_B = "{% for m in messages %}w7 w8 {{ m['content'] }} {% endfor %}w9"
MESSAGES = [{"role": "user", "content": "w10 w11"}, {"role": "assistant", "content": "w12"}]


@pytest.fixture(scope="module")
def templated(causal_adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """lora4's weights three times: with chat_template.jinja, with tokenizer_config.json, with a broken one."""
    root = tmp_path_factory.mktemp("templated")
    dirs = {name: root / name for name in ("tmpl_a", "tmpl_b", "tmpl_bad")}
    for path in dirs.values():
        shutil.copytree(causal_adapters["lora4"], path)
    (dirs["tmpl_a"] / "chat_template.jinja").write_text(TEMPLATE_A)
    (dirs["tmpl_b"] / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE_B}))
    (dirs["tmpl_bad"] / "chat_template.jinja").write_text("{% for m in messages %}")  # never closed
    return dirs


@pytest.fixture(scope="module")
def client(llama_dir: Path, causal_adapters: dict[str, Path], templated: dict[str, Path]):
    adapters = [f"lora4={causal_adapters['lora4']}", f"ia3={causal_adapters['ia3']}"]
    adapters += [f"{name}={path}" for name, path in templated.items() if name != "tmpl_bad"]
    settings = Settings(
        base_model=str(llama_dir), adapters=adapters, max_input_tokens=64, max_total_tokens=128
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def _tokens(client: TestClient, **body: object) -> list[int]:
    out = client.post("/tokenize", json=body)
    assert out.status_code == 200, out.text
    return out.json()["tokens"]


def test_tokenize_prompt_in_vllm_shape(client, llama_dir) -> None:
    tok = AutoTokenizer.from_pretrained(llama_dir)
    text = prompt(3, length=6)
    out = client.post("/tokenize", json={"prompt": text, "model": "lora4", "return_token_strs": True})
    assert out.status_code == 200, out.text
    body = out.json()
    assert body["tokens"] == tok(text)["input_ids"] and body["count"] == 6
    assert body["max_model_len"] == 128  # the total-token limit in force
    assert body["token_strs"] == text.split()
    assert "token_strs" not in client.post("/tokenize", json={"prompt": text}).json()
    back = client.post("/detokenize", json={"tokens": body["tokens"], "model": "lora4"})
    assert back.status_code == 200 and back.json() == {"prompt": text}


def test_tokenize_messages_with_each_adapters_template(client, llama_dir) -> None:
    tok = AutoTokenizer.from_pretrained(llama_dir)

    def rendered(template: str) -> list[int]:
        text = tok.apply_chat_template(
            MESSAGES, chat_template=template, tokenize=False, add_generation_prompt=True
        )
        return tok(text, add_special_tokens=False)["input_ids"]

    base = _tokens(client, messages=MESSAGES)
    assert base == rendered(CHAT_TEMPLATE)
    assert _tokens(client, messages=MESSAGES, model="lora4") == base  # no template of its own: the base's
    a = _tokens(client, messages=MESSAGES, model="tmpl_a")
    b = _tokens(client, messages=MESSAGES, model="tmpl_b")
    assert a == rendered(TEMPLATE_A) and b == rendered(TEMPLATE_B)
    assert len({tuple(base), tuple(a), tuple(b)}) == 3
    no_prompt = _tokens(client, messages=MESSAGES, model="tmpl_a", add_generation_prompt=False)
    assert no_prompt == a[:-1]  # without the trailing w3


def test_chat_completion_runs_the_adapters_template(client) -> None:
    """The chat route's prompt is the adapter's template: same tokens and text as /v1/completions of the prompt
    /tokenize renders, for both templated adapters."""
    for name in ("tmpl_a", "tmpl_b"):
        ids = _tokens(client, messages=MESSAGES, model=name)
        text = client.post("/detokenize", json={"tokens": ids}).json()["prompt"]
        common = {"model": name, "max_tokens": 6, "temperature": 0}
        chat = client.post("/v1/chat/completions", json={**common, "messages": MESSAGES}).json()
        plain = client.post("/v1/completions", json={**common, "prompt": text}).json()
        assert chat["usage"]["prompt_tokens"] == len(ids) == plain["usage"]["prompt_tokens"]
        assert chat["choices"][0]["message"]["content"] == plain["choices"][0]["text"]


def test_a_chat_request_acquires_its_adapter_once(client, monkeypatch) -> None:
    """The chat route takes one lease for the adapter's template and its rows share it (`n` included): one
    acquire per request, so the prompt's template and the weights are of one version; every lease goes back."""
    registry = client.app.state.swapyard.engine.registry
    acquires = AcquireCounter(registry, monkeypatch)
    common = {"model": "tmpl_a", "max_tokens": 3, "temperature": 0}
    chat = {**common, "messages": MESSAGES}
    for n in (1, 3):
        assert client.post("/v1/chat/completions", json={**chat, "n": n}).status_code == 200
    with client.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as stream:
        assert stream.status_code == 200 and "data: [DONE]" in list(stream.iter_lines())
    assert client.post("/v1/completions", json={**common, "prompt": "w5 w6", "n": 3}).status_code == 200
    refused = client.post("/v1/chat/completions", json={**chat, "max_tokens": 10_000})
    assert refused.status_code == 422  # refused after its template was rendered: its lease goes back too
    assert acquires.counts["tmpl_a"] == 5
    assert registry.info("tmpl_a").leases == 0


def test_tokenize_errors(client, templated) -> None:
    assert client.post("/tokenize", json={"prompt": "w1", "model": "nope"}).status_code == 404
    assert client.post("/tokenize", json={"messages": MESSAGES, "model": "nope"}).status_code == 404
    assert client.post("/detokenize", json={"tokens": [5], "model": "nope"}).status_code == 404
    both = client.post("/tokenize", json={"prompt": "w1", "messages": MESSAGES})
    assert both.status_code == 422 and "exactly one of `prompt` and `messages`" in both.json()["error"]
    outside = client.post("/detokenize", json={"tokens": [5, 999]})
    assert outside.status_code == 422 and "token id 999 is outside the vocabulary" in outside.json()["error"]
    assert client.post("/detokenize", json={"tokens": [-1]}).status_code == 422


def test_broken_adapter_template_fails_its_load(serve, llama_dir, templated) -> None:
    with serve(base_model=str(llama_dir), adapter_dir=str(templated["tmpl_bad"].parent)) as client:
        out = client.post("/tokenize", json={"prompt": "w1", "model": "tmpl_bad"})
        assert out.status_code == 422, out.text
        assert "chat_template.jinja is not a valid Jinja template" in out.json()["error"]
        assert client.post("/tokenize", json={"prompt": "w1", "model": "tmpl_a"}).status_code == 200


def _peft_hidden(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids])
    with torch.no_grad():
        return model(input_ids=x, attention_mask=torch.ones_like(x), output_hidden_states=True).hidden_states[
            -1
        ][0]


def _vectors(out) -> list[np.ndarray]:
    assert out.status_code == 200, out.text
    body = out.json()
    assert [d["index"] for d in body["data"]] == list(range(len(body["data"])))
    return [
        np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
        if isinstance(d["embedding"], str)
        else np.array(d["embedding"], dtype=np.float32)
        for d in body["data"]
    ]


def test_embeddings_last_token_against_peft(client, llama_dir, causal_adapters) -> None:
    tok = AutoTokenizer.from_pretrained(llama_dir)
    texts = [prompt(5, length=4), prompt(6, length=9)]
    ids = [tok(t)["input_ids"] for t in texts]
    base = AutoModelForCausalLM.from_pretrained(llama_dir)
    oracles = {"lora4": peft.PeftModel.from_pretrained(base, causal_adapters["lora4"]).eval()}
    for model, oracle_name in (("lora4", "lora4"), (None, None)):
        name = model or "base"
        served = client.get("/v1/models").json()["data"][0]["id"] if model is None else model
        out = client.post("/v1/embeddings", json={"model": served, "input": texts})
        got = _vectors(out)
        assert out.json()["usage"] == {"prompt_tokens": 13, "total_tokens": 13}
        for row, vec in zip(ids, got):
            if oracle_name is None:
                with oracles["lora4"].disable_adapter():
                    want = _peft_hidden(oracles["lora4"], row)[-1]
            else:
                want = _peft_hidden(oracles[oracle_name], row)[-1]
            assert np.allclose(vec, want.numpy(), atol=1e-4), name
    # Token ids (one list, or one per input) and base64 give the same vectors as the texts.
    by_text = _vectors(client.post("/v1/embeddings", json={"model": "lora4", "input": texts}))
    by_ids = _vectors(
        client.post("/v1/embeddings", json={"model": "lora4", "input": ids, "encoding_format": "base64"})
    )
    one = _vectors(client.post("/v1/embeddings", json={"model": "lora4", "input": ids[1]}))
    assert np.allclose(by_text, by_ids, atol=1e-6) and np.allclose(one[0], by_text[1], atol=1e-6)
    ia3 = _vectors(client.post("/v1/embeddings", json={"model": "ia3", "input": texts}))
    assert not np.allclose(ia3[0], by_text[0], atol=1e-3)  # each adapter's own hidden states


def test_embeddings_errors(client) -> None:
    def post(**body: object):
        return client.post("/v1/embeddings", json={"model": "lora4", **body})

    assert post(input="w1", model="nope").status_code == 404
    assert post(input=[]).status_code == 422
    assert post(input=["w1", ""]).json()["error"].startswith("input 1 has no tokens")
    assert "outside the vocabulary" in post(input=[[4, 5], [70000]]).json()["error"]
    assert "dimensions 3" in post(input="w1", dimensions=3).json()["error"]
    assert post(input="w1", encoding_format="int8").status_code == 422
    long = post(input=" ".join(["w1"] * 65))
    assert long.status_code == 422 and "--max-input-tokens" in long.json()["error"]


def test_embeddings_cls_on_bert_against_peft(serve, bert_dir, cls_adapters) -> None:
    path, _ = cls_adapters["sentiment"]
    tok = AutoTokenizer.from_pretrained(bert_dir)
    texts = [prompt(8, length=3), prompt(9, length=7)]
    base = AutoModelForSequenceClassification.from_pretrained(
        bert_dir, num_labels=2, ignore_mismatched_sizes=True
    )
    oracle = peft.PeftModel.from_pretrained(
        base, path
    )  # its own 2-label head; the hidden states are the test
    with serve(base_model=str(bert_dir), adapters=[f"sentiment={path}"]) as client:
        got = _vectors(client.post("/v1/embeddings", json={"model": "sentiment", "input": texts}))
        mean = _vectors(client.post("/v1/embeddings", json={"model": "sentiment", "input": texts[1:]}))
    for text, vec in zip(texts, got):
        want = _peft_hidden(oracle.eval(), tok(text)["input_ids"])[0]  # the first position: CLS pooling
        assert np.allclose(vec, want.numpy(), atol=1e-4)
    assert np.allclose(mean[0], got[1], atol=1e-6)  # a row's vector does not depend on its batch


def test_embedding_pooling_flag(serve, llama_dir, causal_adapters) -> None:
    tok = AutoTokenizer.from_pretrained(llama_dir)
    text = prompt(11, length=5)
    oracle = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(llama_dir), causal_adapters["lora4"]
    )
    with serve(
        base_model=str(llama_dir), adapters=[f"lora4={causal_adapters['lora4']}"], embedding_pooling="mean"
    ) as client:
        (vec,) = _vectors(client.post("/v1/embeddings", json={"model": "lora4", "input": text}))
    want = _peft_hidden(oracle.eval(), tok(text)["input_ids"]).mean(dim=0)
    assert np.allclose(vec, want.numpy(), atol=1e-4)


def test_tei_embed_route(client) -> None:
    texts = [prompt(12, length=4), prompt(13, length=6)]
    lora = _vectors(client.post("/v1/embeddings", json={"model": "lora4", "input": texts}))
    raw = client.post("/embed", json={"inputs": texts, "adapter_id": "lora4", "normalize": False})
    assert raw.status_code == 200, raw.text
    assert np.allclose(np.array(raw.json(), dtype=np.float32), lora, atol=1e-6)
    unit = np.array(client.post("/embed", json={"inputs": texts[0], "adapter_id": "lora4"}).json())
    assert unit.shape == (1, lora[0].shape[0])
    assert np.allclose(unit[0], lora[0] / np.linalg.norm(lora[0]), atol=1e-5)  # normalized by default
    long = " ".join([texts[0]] * 20)  # 80 tokens, over --max-input-tokens 64
    assert client.post("/embed", json={"inputs": long}).status_code == 422
    cut = client.post("/embed", json={"inputs": long, "truncate": True, "truncation_direction": "Left"})
    end = client.post("/embed", json={"inputs": " ".join(long.split()[-64:])})
    assert cut.status_code == 200 and np.allclose(cut.json(), end.json(), atol=1e-6)  # the last 64 tokens
    assert client.post("/embed", json={"inputs": "w1", "adapter_id": "nope"}).status_code == 404
    assert client.post("/embed", json={"inputs": "w1", "prompt_name": "query"}).status_code == 422


def test_embedding_requests_share_one_forward(client, monkeypatch) -> None:
    """Rows of several requests are one batch: the engine is held while two requests queue, then one
    `embed` forward runs all three rows."""
    engine = client.app.state.swapyard.engine
    calls: list[list[str | None]] = []
    real = engine.model.embed

    def counting(ids, names, pooling=None):
        calls.append(list(names))
        return real(ids, names, pooling)

    monkeypatch.setattr(engine.model, "embed", counting)
    results: list = []
    bodies = [{"model": "lora4", "input": ["w1 w2", "w3"]}, {"model": "ia3", "input": "w4 w5"}]
    with engine.hold() as held:
        threads = [
            threading.Thread(target=lambda b=b: results.append(client.post("/v1/embeddings", json=b)))
            for b in bodies
        ]
        for thread in threads:
            thread.start()
        held.wait_queued(2)
    for thread in threads:
        thread.join(60)
    assert [r.status_code for r in results] == [200, 200]
    assert len(calls) == 1 and sorted(n.split("@")[0] for n in calls[0]) == ["ia3", "lora4", "lora4"]
