"""Triton kernels (TRITON_INTERPRET=1 on CPU) against the PyTorch reference, on adversarial batches.

Shapes stay small: the interpreter runs every program in Python. Tolerances: see kernel_cases.
"""

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
)

from kernels import (
    BatchMeta,
    LoraPool,
    build_decode_meta,
    build_prefill_meta,
    ia3_scale_input,
    ia3_scale_output,
    lora_apply,
    lora_shrink,
)
from kernels import triton_lora as tk

pytestmark = pytest.mark.skipif(not tk.INTERPRETED, reason="CPU Triton tests need TRITON_INTERPRET=1")


def run_both(
    case: Case, pool: LoraPool, meta: BatchMeta, dtype: torch.dtype, x_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y_triton, y_reference, u_triton, u_reference) for one batch."""
    x, y = make_inputs(case, meta, x_dtype or dtype)
    u_ref = lora_shrink(x, pool, meta, backend="torch")
    u_tri = lora_shrink(x, pool, meta, backend="triton")
    y_ref = lora_apply(y.clone(), x, pool, meta, backend="torch")
    y_tri = lora_apply(y.clone(), x, pool, meta, backend="triton")
    return y_tri, y_ref, u_tri, u_ref


@pytest.mark.parametrize("decode", [False, True], ids=["sgmv", "bgmv"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_float32_matches_reference(case: Case, decode: bool) -> None:
    pool = make_pool(case, make_adapters(case), torch.float32)
    meta = case.meta(decode)
    y_tri, y_ref, u_tri, u_ref = run_both(case, pool, meta, torch.float32)
    assert_close(u_tri, u_ref, torch.float32)
    assert_close(y_tri, y_ref, torch.float32)
    untouched = (meta.token_slots == -1) | torch.tensor(
        [case.ranks[s] == 0 for s in meta.token_slots.clamp(min=0).tolist()], dtype=torch.bool
    )
    _, y0 = make_inputs(case, meta, torch.float32)
    assert torch.equal(y_tri[untouched], y0[untouched])  # bitwise: never written


@pytest.mark.parametrize("decode", [False, True], ids=["sgmv", "bgmv"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", [CASES[2], CASES[4]], ids=lambda c: c.name)
def test_half_precision_matches_reference(case: Case, dtype: torch.dtype, decode: bool) -> None:
    pool = make_pool(case, make_adapters(case), dtype)
    y_tri, y_ref, u_tri, u_ref = run_both(case, pool, case.meta(decode), dtype)
    assert y_tri.dtype == dtype
    assert_close(u_tri, u_ref, torch.float32)  # products of half values are exact in float32
    assert_close(y_tri, y_ref, dtype)


@pytest.mark.parametrize("decode", [False, True], ids=["sgmv", "bgmv"])
def test_float32_activations_with_bfloat16_weights(decode: bool) -> None:
    case = CASES[3]
    pool = make_pool(case, make_adapters(case), torch.bfloat16)
    y_tri, y_ref, _, _ = run_both(case, pool, case.meta(decode), torch.bfloat16, x_dtype=torch.float32)
    assert y_tri.dtype == torch.float32
    assert_close(y_tri, y_ref, torch.bfloat16)


@pytest.mark.parametrize("decode", [False, True], ids=["sgmv", "bgmv"])
def test_shrink_writes_every_entry_expand_reads(decode: bool) -> None:
    """No split-K, so `lora_apply` hands the kernels an unzeroed `u`: poison it, the result must not change.
    H_in = 300 spans several K blocks (128 / 256), ranks 8, 20 (two rank blocks) and 3."""
    case = Case("wide_k", 300, 24, (8, 20, 3), (2, 0, 1, 1, -1, 0), (3, 2, 5, 1, 2, 4))
    pool = make_pool(case, make_adapters(case), torch.float32)
    meta = case.meta(decode)
    x, y = make_inputs(case, meta, torch.float32)
    u_ref = lora_shrink(x, pool, meta, backend="torch")
    u = torch.full_like(u_ref, float("nan"))
    tk.lora_shrink(x, pool.weights, meta, u)
    written = ~torch.isnan(u)
    assert_close(u[written], u_ref[written], torch.float32)
    y_tri = tk.lora_expand(y.clone(), u, pool.weights, meta)
    assert not torch.isnan(y_tri).any()
    assert_close(y_tri, lora_apply(y.clone(), x, pool, meta, backend="torch"), torch.float32)


def test_each_kernel_family_accepts_either_metadata() -> None:
    """SGMV on decode metadata and BGMV on prefill metadata: both read fields every builder fills."""
    case = CASES[2]
    pool = make_pool(case, make_adapters(case), torch.float32)
    w = pool.weights
    for meta in (case.meta(decode=True), case.meta(decode=False)):
        x, y = make_inputs(case, meta, torch.float32)
        expected = lora_apply(y.clone(), x, pool, meta, backend="torch")
        for shrink, expand in ((tk.sgmv_shrink, tk.sgmv_expand), (tk.bgmv_shrink, tk.bgmv_expand)):
            u = shrink(x, w, meta, torch.zeros(meta.num_tokens, w.rank_capacity))
            assert_close(expand(y.clone(), u, w, meta), expected, torch.float32)


@pytest.mark.parametrize("decode", [False, True], ids=["sgmv", "bgmv"])
def test_strided_inputs_and_outputs(decode: bool) -> None:
    case = CASES[1]
    pool = make_pool(case, make_adapters(case), torch.float32)
    meta = case.meta(decode)
    x, y = make_inputs(case, meta, torch.float32)
    x_wide = torch.randn(meta.num_tokens, case.h_in + 3)
    x_wide[:, 1 : 1 + case.h_in] = x
    y_wide = torch.zeros(meta.num_tokens, case.h_out + 4)
    y_wide[:, 3 : 3 + case.h_out] = y
    expected = lora_apply(y.clone(), x, pool, meta, backend="torch")
    lora_apply(y_wide[:, 3 : 3 + case.h_out], x_wide[:, 1 : 1 + case.h_in], pool, meta, backend="triton")
    assert_close(y_wide[:, 3 : 3 + case.h_out], expected, torch.float32)
    assert torch.all(y_wide[:, :3] == 0) and torch.all(y_wide[:, 3 + case.h_out :] == 0)


@pytest.mark.parametrize("decode", [False, True], ids=["sgmv", "bgmv"])
def test_scattered_pages(decode: bool) -> None:
    case = CASES[2]
    pool = fragmented_pool(case, make_adapters(case), torch.float32)
    y_tri, y_ref, _, _ = run_both(case, pool, case.meta(decode), torch.float32)
    assert_close(y_tri, y_ref, torch.float32)


def test_evicted_slot_is_a_no_op() -> None:
    case = CASES[3]
    pool = make_pool(case, make_adapters(case), torch.float32)
    pool.evict(2)
    meta = case.meta(decode=False)
    y_tri, y_ref, _, _ = run_both(case, pool, meta, torch.float32)
    assert_close(y_tri, y_ref, torch.float32)
    _, y0 = make_inputs(case, meta, torch.float32)
    assert torch.equal(y_tri[meta.token_slots == 2], y0[meta.token_slots == 2])


def assert_same_rounding(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Bit for bit, except bfloat16 under the interpreter: its float32 -> bfloat16 cast truncates where
    CUDA and PyTorch round to nearest even (Triton 3.9), so allow one bfloat16 ulp there."""
    if actual.dtype == torch.bfloat16 and tk.INTERPRETED:
        torch.testing.assert_close(actual, expected, rtol=2.0**-7, atol=0.0)
    else:
        assert torch.equal(actual, expected)


@pytest.mark.parametrize("decode", [False, True], ids=["prefill", "decode"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_ia3_both_sides_match_reference(decode: bool, dtype: torch.dtype) -> None:
    pool = make_ia3_pool(ia3_vectors(5, 40), dtype)
    slots, lengths = [4, -1, 1, 0, 4, 2], [2, 3, 1, 4, 1, 2]
    meta = build_decode_meta(slots) if decode else build_prefill_meta(slots, lengths)
    t = torch.randn(meta.num_tokens, 40).to(dtype)
    # One float32 product rounded once: Triton and reference agree bit for bit.
    x = t.clone()
    scaled = ia3_scale_input(x, pool, meta, backend="triton")
    assert torch.equal(x, t)
    assert_same_rounding(scaled, ia3_scale_input(t, pool, meta, backend="torch"))
    y = t.clone()
    ia3_scale_output(y, pool, meta, backend="triton")
    assert_same_rounding(y, ia3_scale_output(t.clone(), pool, meta, backend="torch"))
    untouched = (meta.token_slots == -1) | (meta.token_slots == 1)
    assert torch.equal(y[untouched], t[untouched]) and torch.equal(scaled[untouched], t[untouched])
    assert not torch.equal(y[~untouched], t[~untouched])


def test_empty_batches() -> None:
    case = CASES[-1]
    pool = make_pool(case, make_adapters(case), torch.float32)
    for meta in (build_decode_meta([]), build_prefill_meta([], []), build_prefill_meta([0, 1], [0, 0])):
        x = torch.zeros(0, case.h_in)
        y = torch.zeros(0, case.h_out)
        assert lora_apply(y, x, pool, meta, backend="triton").shape == (0, case.h_out)
        ia3 = make_ia3_pool(ia3_vectors(2, 8), torch.float32)
        assert ia3_scale_input(torch.zeros(0, 8), ia3, meta, backend="triton").shape == (0, 8)
