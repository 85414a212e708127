"""paged_step on encoder-decoder bases (T5, mT5, BART; issue 16 item 4) equals PEFT row by row: every method PEFT
serves on them, rows of different adapters (and the base) and different encoder lengths packed in one decoder
stream, rows joining while others decode, decoder streams prefilled in uneven chunks (a recomputed row), blocks
shuffled. At every step each row's logits equal PEFT's for that row alone (whole (V,) tensors: the encoder input
and the decoder tokens so far) and its greedy token is PEFT's."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from arch_configs import FAMILIES, VOCAB
from paged_helpers import Oracles

from adapters_core.paged import SeqChunk, StepPlan
from adapters_core.paged import seq2seq as paged_s2s

TOL = 1e-4
NEW = 4
METHODS = ("LoRA", "DoRA", "AdaLoRA", "IA3", "prompt tuning", "P-tuning", "prefix tuning")


@pytest.fixture(scope="module", params=["t5", "mt5", "bart"])
def oracles(request, tmp_path_factory) -> Oracles:
    return Oracles(FAMILIES[request.param], tmp_path_factory.mktemp(request.param), METHODS)


def _start(oracles: Oracles) -> int:
    return int(oracles.peft[None].config.decoder_start_token_id)


@torch.no_grad()
def peft_logits(oracles: Oracles, name: str | None, enc: list[int], dec: list[int]) -> torch.Tensor:
    """PEFT's (V,) logits after the decoder tokens `dec` of encoder input `enc`, the row alone."""
    x = torch.tensor([enc])
    out = oracles.peft[name](
        input_ids=x, attention_mask=torch.ones_like(x), decoder_input_ids=torch.tensor([dec])
    )
    return out.logits[0, -1].float()


class Seq2SeqEngine:
    """Drives paged_step like a scheduler: each row's decoder stream `[start][forced …][generated …]` is
    prefilled in chunks of `chunk_sizes` (cycled), then decoded one token per step; blocks from a shuffled list."""

    def __init__(self, model: Any, num_blocks: int, block_size: int, chunk_sizes: list[int]) -> None:
        self.model, self.block_size, self.chunk_sizes, self.turn = model, block_size, chunk_sizes, 0
        model.init_kv_cache(num_blocks, block_size)
        self.free = list(range(model.reserved_blocks, num_blocks))
        random.Random(0).shuffle(self.free)
        self.rows: dict[int, dict[str, Any]] = {}

    def join(self, seq_id: int, adapter: str | None, enc: list[int], dec: list[int]) -> None:
        assert self.model.stream_prefix_length(adapter) == 0  # virtual tokens open the encoder input
        self.rows[seq_id] = {
            "adapter": adapter,
            "enc": tuple(enc),
            "stream": list(dec),
            "done": 0,
            "blocks": [],
        }

    def leave(self, seq_id: int) -> None:
        row = self.rows.pop(seq_id)
        self.free += row["blocks"]
        self.model.paged_release(seq_id)

    def step(self, on_logits: Any) -> None:
        chunks = []
        for seq_id, row in self.rows.items():
            stream, done = row["stream"], row["done"]
            size = self.chunk_sizes[self.turn % len(self.chunk_sizes)] if len(stream) - done > 1 else 1
            self.turn += 1
            tokens = stream[done : done + size]
            end = done + len(tokens)
            while len(row["blocks"]) * self.block_size < end:
                row["blocks"].append(self.free.pop())
            last = end == len(stream)
            chunks.append(
                SeqChunk(
                    seq_id, row["adapter"], tokens, done, list(row["blocks"]), last, encoder_ids=row["enc"]
                )
            )
            row["done"] = end
        logits = self.model.paged_step(StepPlan(chunks))
        wanted = [c for c in chunks if c.want_logits]
        assert logits.shape[0] == len(wanted)
        for chunk, row_logits in zip(wanted, logits):
            self.rows[chunk.seq_id]["stream"].append(on_logits(chunk.seq_id, row_logits))


def test_paged_support_accepts_encoder_decoders(oracles: Oracles) -> None:
    assert oracles.multi.paged_support() is None
    assert oracles.multi.stream_prefix_length("prompt tuning") == 0


@torch.no_grad()
def test_packed_steps_equal_peft_per_row(oracles: Oracles) -> None:
    names: list[str | None] = [*METHODS, None, "LoRA", "prompt tuning", None]
    random.Random(1).shuffle(names)
    g = torch.Generator().manual_seed(2)

    def tokens(low: int, high: int) -> list[int]:
        return torch.randint(
            3, VOCAB, (int(torch.randint(low, high, (1,), generator=g)),), generator=g
        ).tolist()

    encs = [tokens(2, 12) for _ in names]
    # Some rows come with forced decoder tokens after the start token (a row recomputed after preemption): its
    # decoder stream is prefilled in chunks.
    decs = [[_start(oracles)] + (tokens(2, 7) if r % 3 == 1 else []) for r in range(len(names))]
    engine = Seq2SeqEngine(oracles.multi, num_blocks=64, block_size=4, chunk_sizes=[3, 5, 2])
    got: dict[int, list[int]] = {r: [] for r in range(len(names))}
    checked = 0

    def on_logits(r: int, logits: torch.Tensor) -> int:
        nonlocal checked
        want = peft_logits(oracles, names[r], encs[r], decs[r] + got[r])
        torch.testing.assert_close(logits, want, atol=TOL, rtol=0, msg=lambda m: f"row {r} ({names[r]}): {m}")
        token = int(logits.argmax())
        assert token == int(want.argmax()), (r, names[r])
        got[r].append(token)
        checked += 1
        return token

    step = 0
    while any(len(t) < NEW for t in got.values()):
        for r in range(len(names)):
            if r // 3 == step and r not in engine.rows:  # three rows join per step, while earlier ones decode
                engine.join(r, names[r], encs[r], decs[r])
        for r in [r for r, t in got.items() if len(t) >= NEW and r in engine.rows]:
            engine.leave(r)  # finished rows leave: their encoder keys/values are freed
        engine.step(on_logits)
        step += 1
    assert checked == len(names) * NEW
    for r in list(engine.rows):
        engine.leave(r)
    kept = paged_s2s.store(oracles.multi)
    assert not kept.rows and kept.slab is None  # every row's encoder keys/values were released


@torch.no_grad()
def test_encoder_store_is_per_row_and_freed(oracles: Oracles) -> None:
    """A row's encoder keys/values: kept from its first chunk, exact in length, refreshed when the row starts over
    (preempted and recomputed, or a reused seq_id with another input), dropped by paged_release."""
    model, start = oracles.multi, _start(oracles)
    model.init_kv_cache(8, 4)
    kept = paged_s2s.store(model)
    kept.rows.clear()
    first = model.paged_step(StepPlan([SeqChunk(7, "LoRA", [start], 0, [1], encoder_ids=(5, 6, 7))]))
    row = kept.rows[7]
    assert [k.shape[1] for k, _ in row.kv] == [3] * len(row.kv)
    assert paged_s2s.encoder_kv_bytes(model, 3) == sum(k.numel() + v.numel() for k, v in row.kv) * 4
    # the next chunk reuses them (no encoder input needed once encoded)
    model.paged_step(StepPlan([SeqChunk(7, "LoRA", [9], 1, [1])]))
    assert kept.rows[7] is row
    slab = kept.slab
    model.paged_step(StepPlan([SeqChunk(7, "LoRA", [9], 2, [1])]))
    assert (
        slab is not None and kept.slab is slab
    )  # the same decode rows: their padded keys are not copied again
    # a row that starts over with another input is encoded again: its logits are that input's
    again = model.paged_step(StepPlan([SeqChunk(7, "LoRA", [start], 0, [2], encoder_ids=(8, 9))]))
    torch.testing.assert_close(again[0], peft_logits(oracles, "LoRA", [8, 9], [start]), atol=TOL, rtol=0)
    assert not torch.allclose(first, again)
    model.paged_release(7)
    model.paged_release(7)  # idempotent
    assert 7 not in kept.rows
    with pytest.raises(ValueError, match="encoder_ids"):
        model.paged_step(StepPlan([SeqChunk(8, None, [start], 0, [1])]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.paged_step(StepPlan([SeqChunk(8, None, [start], 0, [1], encoder_ids=(5, VOCAB))]))
    assert 8 not in kept.rows
