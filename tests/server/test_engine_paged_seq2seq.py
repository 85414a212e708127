"""An encoder-decoder base (tiny T5) is served on the engine's paged path (issue 16 item 4): concurrent requests
of the base and of LoRA, IA3 and prompt-tuning adapters, under a token budget and a KV pool small enough to force
preemption (a preempted row is re-encoded and its decoder stream re-prefilled in chunks), each get the greedy
answer PEFT gives that adapter alone; every row's encoder keys/values are freed when it leaves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from serve_helpers import prompt
from test_engine_paged import all_at_once, body, counter, paged_client, tokens
from tiny_models import perturb_adapter_weights
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from adapters_core.paged import seq2seq as paged_s2s

NEW = 10
BLOCK = 4


@pytest.fixture(scope="module")
def t5_adapters(t5_setup: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base, lora = t5_setup
    out = tmp_path_factory.mktemp("t5-paged-adapters")
    configs = {
        "ia3": peft.IA3Config(target_modules=["k", "v", "wo"], feedforward_modules=["wo"]),
        "prompt": peft.PromptTuningConfig(num_virtual_tokens=3),
    }
    written = {"lora": lora}
    for i, (name, cfg) in enumerate(configs.items()):
        cfg.task_type = "SEQ_2_SEQ_LM"
        model = peft.get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(base), cfg)
        perturb_adapter_weights(model, seed=40 + i, scale=0.5)
        model.save_pretrained(out / name)
        written[name] = out / name
    return written


@torch.no_grad()
def peft_answer(base: Path, adapter: Path | None, tok: Any, text: str) -> list[int]:
    """PEFT's greedy tokens for `text` under `adapter` alone, through EOS."""
    model = AutoModelForSeq2SeqLM.from_pretrained(base).eval()
    if adapter is not None:
        model = peft.PeftModel.from_pretrained(model, adapter).eval()
    ids = torch.tensor([tok(text)["input_ids"]])
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False
    )
    new = out[0, 1:].tolist()
    return new[: new.index(tok.eos_token_id) + 1] if tok.eos_token_id in new else new


@pytest.mark.timeout(600)
def test_t5_is_served_paged_and_concurrent_answers_equal_each_adapter_alone(
    t5_setup: tuple[Path, Path], t5_adapters: dict[str, Path]
) -> None:
    base, _ = t5_setup
    tok = AutoTokenizer.from_pretrained(base)
    names: list[str | None] = [None, "lora", "ia3", "prompt", "lora", None, "prompt", "ia3"]
    texts = [prompt(80 + i, length=3 + 3 * (i % 4)) for i in range(len(names))]
    want = [peft_answer(base, t5_adapters[n] if n else None, tok, t) for n, t in zip(names, texts)]
    assert len({tuple(w) for w in want}) > 3, (
        "the adapters' answers must differ for the test to mean anything"
    )
    with paged_client(
        "core",
        kv_blocks=8,  # 7 usable blocks of 4: fewer than 8 rows of up to 3 blocks need at once
        base_model=str(base),
        adapters=[f"{n}={p}" for n, p in t5_adapters.items()],
        max_batch_size=8,
        max_batch_tokens=4,
        kv_block_size=BLOCK,
    ) as (client, engine, plans):
        assert engine.model.paged_support() is None
        out = all_at_once(client, engine, [body(t, n, NEW) for t, n in zip(texts, names)])
        for name, text, expected, response in zip(names, texts, want, out):
            assert tokens(response) == expected, (name, text)
        assert all(c.encoder_ids is not None for plan in plans for c in plan.chunks)
        assert counter(engine, "preemptions") > 0, "the KV budget was meant to force preemption"
        assert any(len(c.tokens) > 1 for plan in plans for c in plan.chunks), (
            "no decoder stream was re-prefilled"
        )
        engine.wait_idle()
        assert not paged_s2s.store(engine.model).rows, "a row's encoder keys/values outlived it"
        response = client.post(
            "/generate",
            json={"inputs": texts[0], "parameters": {"max_new_tokens": 2, "decoder_input_details": True}},
        )
        assert response.status_code == 422 and "encoder" in response.json()["error"], response.text


def held_blocks(engine: Any) -> tuple[int, int]:
    """(blocks the pool says are held, blocks the running rows hold: their tables' and their reserved ones)."""
    batch = engine._batch
    tables = {b for row in batch.rows for b in batch.blocks.table(row.seq.seq_id)}
    return batch.blocks.pool.num_used, len(tables) + sum(row.seq.reserved_blocks for row in batch.rows)


@pytest.mark.timeout(600)
def test_a_rows_encoder_keys_values_are_charged_to_the_kv_pool_and_decide_admission(
    t5_setup: tuple[Path, Path],
) -> None:
    """Encoder keys/values live outside the pool (encoder_store.py) but are charged to it: a row holds
    ceil(their bytes / block bytes) blocks from admission until it leaves. Two long-input rows cannot run
    together in a pool where two short ones can; the pool's count always equals what the running rows hold."""
    base, lora = t5_setup
    tok = AutoTokenizer.from_pretrained(base)
    long_texts, short_texts = (
        [prompt(90 + i, length=22) for i in range(2)],
        [prompt(95 + i, 2) for i in range(2)],
    )
    adapters = [None, "lora"]
    lengths = [len(tok(t)["input_ids"]) for t in long_texts + short_texts]
    reserve = [-(-n // BLOCK) for n in lengths]  # T5: cross keys/values per position = a block's per position
    usable = 10
    decoder = -(-(1 + NEW) // BLOCK)  # blocks of a decoder stream at its longest
    assert all(decoder + r <= usable < 2 * (1 + r) for r in reserve[:2]), ("long inputs", lengths)
    assert 2 * (decoder + max(reserve[2:])) <= usable, ("short inputs", lengths)
    with paged_client(
        "core",
        kv_blocks=usable + 1,  # block 0 is the scratch block
        base_model=str(base),
        adapters=[f"lora={lora}"],
        max_batch_size=8,
        max_batch_tokens=16,
        kv_block_size=BLOCK,
    ) as (client, engine, plans):
        model = engine.model
        per_block = model.kv_block_bytes(BLOCK)
        assert [-(-paged_s2s.encoder_kv_bytes(model, n) // per_block) for n in lengths] == reserve
        counts: list[tuple[int, int]] = []
        step = model.paged_step

        def counting(plan: Any) -> Any:
            counts.append(held_blocks(engine))
            return step(plan)

        model.paged_step = counting
        for texts in (long_texts, short_texts):
            before = len(plans)
            out = all_at_once(client, engine, [body(t, n, NEW) for t, n in zip(texts, adapters)])
            for name, text, response in zip(adapters, texts, out):
                assert tokens(response) == peft_answer(base, lora if name else None, tok, text), (name, text)
            together = [len({c.seq_id for c in plan.chunks}) for plan in plans[before:]]
            if texts is long_texts:
                assert max(together) == 1, (
                    "two long-input rows ran together: their encoder keys were not charged"
                )
            else:
                assert max(together) == 2, "two short-input rows should run together"
        assert counts and all(used == held for used, held in counts), counts
        engine.wait_idle()
        assert engine._batch.blocks.pool.num_used == 0, "a row that left kept blocks"
        assert not paged_s2s.store(model).rows
        # 1 + 16 decoder positions (5 blocks) and 6 blocks of encoder keys/values: more than the 10 there are
        response = client.post("/generate", json=body(long_texts[0], None, 16))
        assert response.status_code == 422 and "encoder" in response.json()["error"], response.text
