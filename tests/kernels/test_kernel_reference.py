"""The PyTorch reference against a naive per-token loop (float64), and its in-place contracts."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import (
    CASES,
    Case,
    assert_close,
    fragmented_pool,
    ia3_vectors,
    make_adapters,
    make_ia3_pool,
    make_inputs,
    make_pool,
    naive_ia3,
    naive_lora,
)

from kernels import (
    build_decode_meta,
    build_prefill_meta,
    ia3_scale_input,
    ia3_scale_output,
    lora_apply,
    lora_expand,
    lora_shrink,
)

TORCH = "torch"


@pytest.mark.parametrize("decode", [False, True], ids=["prefill", "decode"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_lora_apply_matches_naive_loop(case: Case, decode: bool) -> None:
    adapters = make_adapters(case)
    pool = make_pool(case, adapters, torch.float32)
    meta = case.meta(decode)
    x, y = make_inputs(case, meta, torch.float32)
    expected = naive_lora(y, x, adapters, meta.token_slots, torch.float32)
    out = lora_apply(y, x, pool, meta, backend=TORCH)
    assert out is y
    assert_close(y, expected, torch.float32)


@pytest.mark.parametrize("case", CASES[:5], ids=lambda c: c.name)
def test_shrink_writes_rank_prefix_and_zeros_elsewhere(case: Case) -> None:
    adapters = make_adapters(case)
    pool = make_pool(case, adapters, torch.float32)
    meta = case.meta(decode=False)
    x, _ = make_inputs(case, meta, torch.float32)
    garbage = torch.full((meta.num_tokens, pool.rank_capacity), 7.0)
    u = lora_shrink(x, pool, meta, out=garbage, backend=TORCH)
    assert u is garbage
    for t, slot in enumerate(meta.token_slots.tolist()):
        ad = adapters[slot] if slot >= 0 else None
        r = 0 if ad is None else ad[0].shape[0]
        if ad is not None:
            torch.testing.assert_close(u[t, :r], x[t] @ ad[0].T, rtol=1e-5, atol=1e-5)
        assert torch.all(u[t, r:] == 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_follows_the_documented_roundings(dtype: torch.dtype) -> None:
    case = CASES[3]  # no_adapter_rows
    adapters = make_adapters(case)
    pool = make_pool(case, adapters, dtype)
    meta = case.meta(decode=False)
    x, y = make_inputs(case, meta, dtype)
    expected = naive_lora(y, x, adapters, meta.token_slots, dtype)
    lora_apply(y, x, pool, meta, backend=TORCH)
    assert y.dtype == dtype
    assert_close(y, expected, dtype)


def test_activations_are_cast_to_the_weights_dtype() -> None:
    case = CASES[0]
    adapters = make_adapters(case)
    pool = make_pool(case, adapters, torch.bfloat16)
    meta = case.meta(decode=True)
    x, y = make_inputs(case, meta, torch.float32)
    y.zero_()  # the output is the LoRA delta alone, in float32: the roundings of x and u show
    expected = naive_lora(y, x, adapters, meta.token_slots, torch.bfloat16)  # x and u rounded to bf16
    lora_apply(y, x, pool, meta, backend=TORCH)
    assert y.dtype == torch.float32
    assert_close(y, expected, torch.float32)
    unrounded = naive_lora(torch.zeros_like(y), x, adapters, meta.token_slots, torch.float32)
    assert (y - unrounded).abs().max() > 1e-3 * unrounded.abs().max()  # the test can tell the difference


def test_rows_without_adapter_are_bitwise_untouched() -> None:
    case = CASES[3]
    pool = make_pool(case, make_adapters(case), torch.float32)
    meta = case.meta(decode=False)
    x, y = make_inputs(case, meta, torch.float32)
    before = y.clone()
    lora_apply(y, x, pool, meta, backend=TORCH)
    # slot -1 rows, and slot 1 which is empty in this pool.
    untouched = (meta.token_slots == -1) | (meta.token_slots == 1)
    assert torch.equal(y[untouched], before[untouched])
    assert not torch.equal(y[~untouched], before[~untouched])


def test_strided_and_nd_outputs_are_updated_in_place() -> None:
    case = CASES[1]
    adapters = make_adapters(case)
    pool = make_pool(case, adapters, torch.float32)
    meta = build_prefill_meta(list(range(4)), [3] * 4)  # a padded (4, 3, H) batch
    x, y = make_inputs(case, meta, torch.float32)
    expected = naive_lora(y, x, adapters, meta.token_slots, torch.float32)

    wide = torch.zeros(meta.num_tokens, case.h_out + 5)
    wide[:, 2 : 2 + case.h_out] = y
    lora_apply(wide[:, 2 : 2 + case.h_out], x, pool, meta, backend=TORCH)  # a column slice of a fused output
    assert_close(wide[:, 2 : 2 + case.h_out], expected, torch.float32)
    assert torch.all(wide[:, :2] == 0) and torch.all(wide[:, 2 + case.h_out :] == 0)

    y3 = y.clone().view(4, 3, case.h_out)
    lora_apply(y3, x.view(4, 3, case.h_in), pool, meta, backend=TORCH)
    assert_close(y3.view(-1, case.h_out), expected, torch.float32)


def test_fragmented_pages_give_the_same_result() -> None:
    case = CASES[2]
    adapters = make_adapters(case)
    pool = fragmented_pool(case, adapters, torch.float32)
    scattered = [s for s, r in enumerate(case.ranks) if r > 2]
    assert all(pool.page_start[s].item() == -1 for s in scattered)
    assert all(
        pool.pages_of(s) != list(range(pool.pages_of(s)[0], pool.pages_of(s)[0] + case.ranks[s]))
        for s in scattered
    )
    meta = case.meta(decode=False)
    x, y = make_inputs(case, meta, torch.float32)
    expected = naive_lora(y, x, adapters, meta.token_slots, torch.float32)
    lora_apply(y, x, pool, meta, backend=TORCH)
    assert_close(y, expected, torch.float32)


def test_expand_skips_empty_batches() -> None:
    case = CASES[-1]
    pool = make_pool(case, make_adapters(case), torch.float32)
    meta = build_decode_meta([])
    x = torch.zeros(0, case.h_in)
    u = lora_shrink(x, pool, meta, backend=TORCH)
    assert u.shape == (0, pool.rank_capacity)
    y = torch.zeros(0, case.h_out)
    assert lora_expand(y, u, pool, meta, backend=TORCH) is y


@pytest.mark.parametrize("decode", [False, True], ids=["prefill", "decode"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ia3_both_sides_match_naive(decode: bool, dtype: torch.dtype) -> None:
    vectors = ia3_vectors(5, 24)
    pool = make_ia3_pool(vectors, dtype)
    slots, lengths = [4, -1, 1, 0, 4, 2], [2, 3, 1, 4, 1, 2]
    meta = build_decode_meta(slots) if decode else build_prefill_meta(slots, lengths)
    t = torch.randn(meta.num_tokens, 24).to(dtype)
    expected = naive_ia3(t, vectors, meta.token_slots, dtype)

    x = t.clone()
    scaled = ia3_scale_input(x, pool, meta, backend=TORCH)
    assert torch.equal(x, t)  # the input side never modifies its argument
    assert_close(scaled, expected, dtype)

    y = t.clone()
    assert ia3_scale_output(y, pool, meta, backend=TORCH) is y
    assert_close(y, expected, dtype)
    untouched = (meta.token_slots == -1) | (meta.token_slots == 1)
    assert torch.equal(y[untouched], t[untouched])
