"""/classify on a BERT base with two PEFT classification adapters of different label counts, and seq2seq
generation on a T5 base, through the real app in process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from serve_helpers import prompt, reference_tokens
from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoTokenizer

from adapters_core.multi import MultiAdapterModel
from server.app import create_app
from server.settings import Settings


@pytest.fixture(scope="module")
def client(bert_dir: Path, cls_adapters: dict[str, tuple[Path, list[str]]]):
    adapters = [f"{name}={path}" for name, (path, _) in cls_adapters.items()]
    with TestClient(
        create_app(Settings(base_model=str(bert_dir), adapters=adapters)), raise_server_exceptions=False
    ) as c:
        yield c


def test_two_heads_with_their_own_labels(client, bert_dir, cls_adapters) -> None:
    multi = MultiAdapterModel(AutoModelForSequenceClassification.from_pretrained(bert_dir))
    for name, (path, _) in cls_adapters.items():
        multi.add(name, str(path))
    tok = AutoTokenizer.from_pretrained(bert_dir)
    texts = [prompt(1), prompt(2, length=9)]
    for name, (_, labels) in cls_adapters.items():
        out = client.post("/classify", json={"inputs": texts, "parameters": {"adapter_id": name}})
        assert out.status_code == 200, out.text
        result = out.json()
        assert len(result) == 2
        for text, ranked in zip(texts, result):
            assert sorted(r["label"] for r in ranked) == sorted(labels)
            ids = torch.tensor([tok(text)["input_ids"]])
            probs = torch.softmax(multi.classify(ids.tolist(), [name])[0], -1)
            assert ranked[0]["label"] == labels[int(probs.argmax())]
            assert abs(ranked[0]["score"] - float(probs.max())) < 1e-5
    top = client.post(
        "/classify", json={"inputs": texts[0], "parameters": {"adapter_id": "topic", "top_k": 2}}
    )
    assert len(top.json()[0]) == 2


def test_classify_errors(client) -> None:
    assert (
        client.post("/classify", json={"inputs": "w1", "parameters": {"adapter_id": "nope"}}).status_code
        == 404
    )
    assert client.post("/classify", json={"inputs": []}).status_code == 422
    assert client.post("/classify", json={"inputs": ["w1", ""]}).status_code == 422
    assert client.post("/generate", json={"inputs": "w1"}).status_code == 400  # an encoder does not generate
    base = client.post("/classify", json={"inputs": "w1 w2"})
    assert base.status_code == 200 and len(base.json()[0]) == 3  # the base head: tiny_bert's 3 labels


def test_seq2seq_generation(t5_setup) -> None:
    base_dir, adapter = t5_setup
    multi = MultiAdapterModel(AutoModelForSeq2SeqLM.from_pretrained(base_dir))
    multi.add("t5lora", str(adapter))
    tok = AutoTokenizer.from_pretrained(base_dir)
    settings = Settings(base_model=str(base_dir), adapters=[f"t5lora={adapter}"])
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        for name in (None, "t5lora"):
            text = prompt(9)
            out = c.post(
                "/generate",
                json={
                    "inputs": text,
                    "parameters": {"adapter_id": name, "max_new_tokens": 5, "details": True},
                },
            )
            assert out.status_code == 200, out.text
            got = [t["id"] for t in out.json()["details"]["tokens"]]
            assert got == reference_tokens(multi, tok, text, name, 5)[: len(got)]
