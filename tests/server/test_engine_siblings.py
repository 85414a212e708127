"""`n` > 1 shares the prompt's prefill (issue 17.2, engine/siblings.py): the n rows of one request compute the
prompt once (its full KV blocks shared, the partial last block copied) and every choice is still exactly the
same request run alone with its derived seed (seed, seed + 1, ...). Over the real paged core and over the
reference double (paged_double.py: a forked table that is wrong reads unwritten or foreign positions)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path
from typing import Any

import pytest
from app_hooks import paged_client
from serve_helpers import prompt
from transformers import AutoTokenizer

from server.engine import ErrorEvent, GenerationRequest, TokenEvent, build_engine
from server.generation import choice_requests
from server.sampling import SamplingParams
from server.settings import Settings

N, NEW, BLOCK = 4, 6, 4


@pytest.mark.parametrize("model", ["double", "core"])
def test_n_rows_prefill_the_prompt_once_and_equal_each_seed_alone(
    model: str, llama_dir: Path, causal_adapters: dict[str, Path]
) -> None:
    text = prompt(41, 9)
    ids = AutoTokenizer.from_pretrained(llama_dir)(text)["input_ids"]
    assert len(ids) % BLOCK and len(ids) > 2 * BLOCK  # full blocks to share and a partial one to copy
    settings = {
        "base_model": str(llama_dir),
        "adapters": [f"lora4={causal_adapters['lora4']}"],
        "max_batch_size": 8,
        "max_batch_tokens": 8,  # the prompt is prefilled in chunks
        "kv_block_size": BLOCK,
    }
    body = {"model": "lora4", "prompt": text, "max_tokens": NEW, "temperature": 1.5, "seed": 10}
    with paged_client(model, **settings) as (client, engine, plans):
        out: list[Any] = []
        thread = threading.Thread(
            target=lambda: out.append(client.post("/v1/completions", json={**body, "n": N}))
        )
        with engine.hold() as held:
            thread.start()
            held.wait_queued(N)  # every row is queued before the first step
        thread.join(timeout=300)
        assert out and out[0].status_code == 200, out and out[0].text
        prompt_rows = {c.seq_id for p in plans for c in p.chunks if c.start < len(ids) and len(c.tokens) > 1}
        prompt_tokens = sum(len(c.tokens) for p in plans for c in p.chunks if c.start < len(ids))
        assert len(prompt_rows) == 1 and prompt_tokens == len(ids), (prompt_rows, prompt_tokens)
        assert engine.metrics.prompt_tokens._value.get() == len(ids)
        many = [c["text"] for c in out[0].json()["choices"]]
        singles = []
        for i in range(N):
            alone = client.post("/v1/completions", json={**body, "seed": 10 + i})
            assert alone.status_code == 200, alone.text
            singles.append(alone.json()["choices"][0]["text"])
        assert many == singles
        assert len(set(singles)) > 1  # the seeds really differ
        engine.wait_idle()
        assert engine._batch.blocks.pool.num_used == 0  # every shared block went back (refcounts balanced)


async def _tokens(handle: Any) -> list[int]:
    out = []
    async for event in handle.events():
        if isinstance(event, ErrorEvent):
            raise event.error
        if isinstance(event, TokenEvent):
            out.append(event.token_id)
    return out


@pytest.mark.timeout(300)  # without the fix the followers wait forever
def test_followers_of_a_cancelled_leader_compute_the_prompt_themselves(llama_dir: Path) -> None:
    """The leader leaves before sampling: its followers join the queue as ordinary rows, and still answer
    exactly as alone (no follower is lost waiting for a leader that is gone)."""
    settings = Settings(base_model=str(llama_dir), max_batch_size=8, max_batch_tokens=8, kv_block_size=BLOCK)
    engine = build_engine(settings)
    engine.start()
    ids = AutoTokenizer.from_pretrained(llama_dir)(prompt(43, 9))["input_ids"]
    sampling = SamplingParams(do_sample=True, temperature=1.5, seed=7)
    rows = choice_requests(GenerationRequest(ids, None, sampling, max_new_tokens=NEW), 3)

    async def run() -> tuple[list[list[int]], list[list[int]]]:
        loop = asyncio.get_running_loop()
        with engine.hold() as held:
            handles = [engine.submit_generate(row, loop) for row in rows]
            held.wait_queued(3)
            assert len(engine._waiting) == 1  # one leader queued, two followers beside it
            handles[0].cancel()
        followers = [await _tokens(h) for h in handles[1:]]
        alone = [
            await _tokens(engine.submit_generate(dataclasses.replace(row, group=None), loop))
            for row in rows[1:]
        ]
        return followers, alone

    try:
        followers, alone = asyncio.run(run())
    finally:
        engine.stop()
    assert followers == alone and followers[0] != followers[1]
