"""The PEFT baseline (bench/serving/peft_server.py) answers what PEFT answers: a mixed batch of rows with
different adapters (and none) gives each row the tokens PEFT's generate gives that row alone, each row
stops at its own budget, and the HTTP shape is Swapyard's (SSE events, a 404 for an unknown adapter)."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from bench.serving import fixtures as fx
from bench.serving.peft_server import Batcher, Job, adapter_folders, create_app, load_model


@pytest.fixture(scope="module")
def baseline(micro_files):
    adapters = adapter_folders(str(micro_files.adapters_dir), None)
    model = load_model(str(micro_files.base_dir), adapters, "cpu", "float32")
    tokenizer = AutoTokenizer.from_pretrained(micro_files.base_dir)
    return Batcher(model, tokenizer, torch.device("cpu"), max_batch_size=8), [name for name, _ in adapters]


def alone(batcher: Batcher, ids: list[int], adapter: str | None, n: int) -> list[int]:
    """PEFT's greedy tokens for one row by itself."""
    with torch.no_grad():
        out = batcher.model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            adapter_names=[adapter or "__base__"],
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, len(ids) :].tolist()


def drain(loop: asyncio.AbstractEventLoop, job: Job) -> list[dict]:
    loop.run_until_complete(asyncio.sleep(0))  # run the call_soon_threadsafe callbacks
    events = []
    while not job.events.empty():
        events.append(job.events.get_nowait())
    return events


def test_a_mixed_batch_gives_each_row_its_own_tokens_and_budget(baseline) -> None:
    batcher, names = baseline
    loop = asyncio.new_event_loop()
    words = fx.words(256)
    rows = [
        (words[3:9], None, 4),
        (words[10:13], names[0], 6),
        (words[20:27], names[1], 3),
        (words[5:9], names[2], 5),
    ]
    ids = [batcher.tokenizer(" ".join(w), add_special_tokens=False)["input_ids"] for w, _, _ in rows]
    jobs = [Job(i, adapter, n, loop) for i, (_, adapter, n) in zip(ids, rows)]
    batcher._generate(jobs)
    for job, row_ids in zip(jobs, ids):
        events = drain(loop, job)
        assert [e["token"]["id"] for e in events] == alone(batcher, row_ids, job.adapter, job.max_new_tokens)
        assert [e["index"] for e in events] == list(range(job.max_new_tokens))
        assert ["generated_text" in e for e in events] == [False] * (job.max_new_tokens - 1) + [True]
    assert len({tuple(j.tokens) for j in jobs}) == len(jobs)  # the adapters make the rows differ
    loop.close()


def test_the_http_routes_speak_swapyard_shape(baseline) -> None:
    batcher, names = baseline
    batcher.start()
    try:
        with TestClient(create_app(batcher, set(names))) as client:
            body = {"inputs": "w1 w2 w3", "parameters": {"adapter_id": names[1], "max_new_tokens": 4}}
            with client.stream("POST", "/generate_stream", json=body) as response:
                assert response.status_code == 200
                events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
            prompt = batcher.tokenizer("w1 w2 w3", add_special_tokens=False)["input_ids"]
            assert [e["token"]["id"] for e in events] == alone(batcher, prompt, names[1], 4)
            assert (
                events[-1]["generated_text"] == client.post("/generate", json=body).json()["generated_text"]
            )
            missing = client.post(
                "/generate_stream", json={"inputs": "w1", "parameters": {"adapter_id": "nope"}}
            )
            assert missing.status_code == 404
            assert missing.json() == {
                "error": "adapter 'nope' is not loaded in the PEFT baseline",
                "error_type": "adapter_not_found",
            }
            assert client.get("/ready").status_code == 200
    finally:
        batcher.stop()
