"""paged_step on encoder-decoder bases (T5, mT5, BART; issue 16 item 4) equals PEFT row by row: every method PEFT
serves on them, rows of different adapters (and the base) and different encoder lengths packed in one decoder
stream, rows joining while others decode, decoder streams prefilled in uneven chunks (a recomputed row), blocks
shuffled. At every step each row's logits equal PEFT's for that row alone (whole (V,) tensors: the encoder input
and the decoder tokens so far) and its greedy token is PEFT's."""

from __future__ import annotations

import random

import pytest
import torch
from arch_configs import FAMILIES, VOCAB
from paged_helpers import MiniEngine, Oracles, StepChecker, run_joining_rows

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
    engine = MiniEngine(oracles.multi, num_blocks=64, block_size=4, chunk_sizes=[3, 5, 2])
    check = StepChecker(names, lambda r, got: peft_logits(oracles, names[r], encs[r], decs[r] + got), TOL)
    # finished rows leave (MiniEngine.leave): their encoder keys/values are freed
    run_joining_rows(engine, check, NEW, lambda r: engine.join(r, names[r], decs[r], encoder_ids=encs[r]))
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


@torch.no_grad()
def test_a_step_packing_more_decoder_tokens_than_the_base_has_positions() -> None:
    """BART numbers decoder tokens with a learned table (128 positions in the tiny config). Three rows of 60
    decoder tokens each fit it, but their packed prefill step holds 180 tokens: every token must take its own
    row's position (before: the table was first indexed with the packed step's 0 .. 179, an IndexError that
    failed the step), and the packed logits equal each row's own step."""
    from adapters_core.multi import MultiAdapterModel

    base = FAMILIES["bart"].build()
    assert base.config.max_position_embeddings < 180
    model = MultiAdapterModel(base)
    g = torch.Generator().manual_seed(3)
    encs = [torch.randint(3, VOCAB, (5 + r,), generator=g).tolist() for r in range(3)]
    decs = [torch.randint(3, VOCAB, (60,), generator=g).tolist() for _ in range(3)]
    per_row = -(-61 // 4)
    tables = [list(range(1 + r * per_row, 1 + (r + 1) * per_row)) for r in range(3)]
    chunks = [SeqChunk(r, None, decs[r], 0, tables[r], encoder_ids=encs[r]) for r in range(3)]
    model.init_kv_cache(1 + 3 * per_row, 4)
    packed = model.paged_step(StepPlan(chunks))
    for r in range(3):
        model.paged_release(r)
    model.init_kv_cache(1 + 3 * per_row, 4)
    alone = torch.cat([model.paged_step(StepPlan([c])) for c in chunks])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)
