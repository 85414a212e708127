"""kernels/grouped.py (the CPU fast path of `lora_apply`) against the per-segment reference."""

from __future__ import annotations

import random

import pytest
import torch

from kernels import LoraPool, build_decode_meta, build_prefill_meta, reference
from kernels.grouped import lora_apply_grouped


def _pool(n_slots: int, ranks: list[int], h_in: int = 37, h_out: int = 53, dtype=torch.float32) -> LoraPool:
    pool = LoraPool(h_in, h_out, budget_bytes=1 << 24, num_slots=n_slots, rank_capacity=64, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    for slot, r in enumerate(ranks):
        if r:
            a, b = torch.randn(r, h_in, generator=g), torch.randn(h_out, r, generator=g)
            pool.load(slot, a.to(dtype), b.to(dtype), 0.5 + slot / 10)
    return pool


def _reference(y, x, pool, meta):
    u = torch.zeros(meta.num_tokens, pool.rank_capacity)
    reference.lora_shrink(x.to(pool.weights.dtype), pool.weights, meta, u)
    return reference.lora_expand(y.clone(), u, pool.weights, meta)


@pytest.mark.parametrize("layout", ["decode", "rows", "ragged"])
@pytest.mark.parametrize("seed", range(6))
def test_grouped_equals_reference_or_declines(layout: str, seed: int) -> None:
    rng = random.Random(seed)
    ranks = [rng.choice([0, 4, 8]) for _ in range(6)]
    pool = _pool(8, ranks)  # slots 6 and 7 stay empty
    rows = rng.randint(1, 10)
    slots = [rng.randint(-1, 7) for _ in range(rows)]
    if layout == "decode":
        meta, tokens = build_decode_meta(slots), rows
    elif layout == "rows":
        length = rng.randint(2, 5)
        meta, tokens = build_prefill_meta(slots, [length] * rows), rows * length
    else:
        lengths = [rng.randint(0, 4) for _ in range(rows)]
        meta, tokens = build_prefill_meta(slots, lengths), sum(lengths)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(tokens, 37, generator=g), torch.randn(tokens, 53, generator=g)
    expected = _reference(y, x, pool, meta)
    got = y.clone()
    if lora_apply_grouped(got, x, pool.weights, meta):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(got, y), "a declined call must leave y untouched"


def test_uniform_ranks_take_the_fast_path_and_leave_base_rows_bit_identical() -> None:
    pool = _pool(4, [8, 8, 8, 8])
    slots = [3, -1, 0, 0, 2, -1]
    meta = build_prefill_meta(slots, [5] * 6)
    x, y = torch.randn(30, 37), torch.randn(30, 53)
    got = y.clone()
    assert lora_apply_grouped(got, x, pool.weights, meta)
    torch.testing.assert_close(got, _reference(y, x, pool, meta), rtol=1e-5, atol=1e-5)
    base_rows = torch.tensor(slots).repeat_interleave(5) < 0
    assert torch.equal(got[base_rows], y[base_rows])
    assert not torch.equal(got[~base_rows], y[~base_rows])


def test_large_adapters_decline_in_prefill_and_are_read_in_place_in_decode() -> None:
    pool = LoraPool(2048, 2048, budget_bytes=1 << 26, num_slots=2, rank_capacity=64, dtype=torch.float32)
    pool.load(0, torch.randn(64, 2048), torch.randn(2048, 64), 1.0)  # 1 MiB of pages: gathering costs more
    x, y = torch.randn(4, 2048), torch.randn(4, 2048)
    assert not lora_apply_grouped(y.clone(), x, pool.weights, build_prefill_meta([0, 0], [2, 2]))
    # Decode never declines (a row's path must not depend on its batch-mates): one bmm over the adapter's pages.
    meta = build_decode_meta([0, -1, 0, 0])
    got = y.clone()
    assert lora_apply_grouped(got, x, pool.weights, meta)
    torch.testing.assert_close(got, _reference(y, x, pool, meta), rtol=1e-4, atol=1e-3)
    assert torch.equal(got[1], y[1])
