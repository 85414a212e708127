"""Multi-slice shrink/expand (kernels/slices.py, kernels/triton_fused.py) against the per-module ops.

A group of three pools as q/k/v of a GQA block: one H_in, outputs 40 / 24 / 24, per-slice ranks that differ
for one slot (rank_pattern), a slot empty in one slice only, rows without an adapter. The Triton launch
(TRITON_INTERPRET=1) must equal the torch reference and the single-module Triton launches on every slice.
Tolerances: kernel_cases (float32 tight; bfloat16 two ulps).
"""

from __future__ import annotations

import pytest
import torch
from kernel_cases import EPS, assert_close

from kernels import LoraPool, build_decode_meta, build_prefill_meta, lora_expand, lora_shrink, variants
from kernels import triton_lora as tk
from kernels.errors import ShapeError
from kernels.slices import lora_expand_slices, lora_shrink_slices
from kernels.variants import use_shared_decode

H_IN, OUTS, CAP = 48, (40, 24, 24), 32
# Rank of every slot in every slice: slot 1 is empty in slice 2; slot 3 has rank 32 in slice 0 only.
RANKS = ((8, 16, 4, 32), (8, 16, 4, 8), (8, 0, 4, 8))
ROW_SLOTS = [3, -1, 0, 1, 3, 2, 0, -1, 1, 3]
ROW_LENGTHS = [3, 2, 1, 4, 2, 5, 1, 2, 3, 1]


def make_group(dtype: torch.dtype, seed: int = 0) -> list[LoraPool]:
    gen = torch.Generator().manual_seed(seed)
    pools = []
    for out_f, ranks in zip(OUTS, RANKS):
        adapters: list[tuple[torch.Tensor, torch.Tensor, float] | None] = []
        for slot, r in enumerate(ranks):
            if r == 0:
                adapters.append(None)
                continue
            a = torch.randn(r, H_IN, generator=gen) / H_IN**0.5
            b = torch.randn(out_f, r, generator=gen) / r**0.5
            adapters.append((a, b, 0.5 + 0.25 * slot))
        pools.append(LoraPool.from_adapters(adapters, dtype=dtype, rank_capacity=CAP))
    return pools


def inputs(meta, dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(meta.num_tokens, H_IN, generator=gen).to(dtype)  # (T, H_in)
    ys = [torch.randn(meta.num_tokens, n, generator=gen).to(dtype) for n in OUTS]  # (T, H_out_s)
    return x, ys


def per_module(x, ys, pools, meta, backend: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    us = [lora_shrink(x, p, meta, backend=backend) for p in pools]
    outs = [lora_expand(y.clone(), u, p, meta, backend=backend) for y, u, p in zip(ys, us, pools)]
    return torch.stack(us), outs


def fused(x, ys, pools, meta, backend: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    u = lora_shrink_slices(x, pools, meta, backend=backend)
    outs = [y.clone() for y in ys]
    lora_expand_slices(outs, u, pools, meta, backend=backend)
    return u, outs


def meta_of(decode: bool | str):
    if decode == "shared":  # 24 adapted rows over 4 adapters: the shared-adapter decode programs
        return build_decode_meta(ROW_SLOTS * 3)
    if decode:
        return build_decode_meta(ROW_SLOTS)
    return build_prefill_meta(ROW_SLOTS, ROW_LENGTHS)


@pytest.mark.parametrize("decode", [False, True], ids=["sgmv", "bgmv"])
def test_reference_slices_equal_the_single_module_reference(decode: bool) -> None:
    pools, meta = make_group(torch.float32), meta_of(decode)
    x, ys = inputs(meta, torch.float32)
    u_ref, y_ref = per_module(x, ys, pools, meta, "torch")
    u, outs = fused(x, ys, pools, meta, "torch")
    assert torch.equal(u, u_ref)
    for out, ref, y in zip(outs, y_ref, ys):
        assert torch.equal(out, ref)
        assert not torch.equal(out, y)  # the adapters change every slice


@pytest.mark.skipif(not tk.INTERPRETED, reason="CPU Triton tests need TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("decode", [False, True, "shared"], ids=["sgmv", "bgmv", "shared"])
def test_triton_slices_equal_reference_and_single_module_launches(
    decode: bool | str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    pools, meta = make_group(dtype), meta_of(decode)
    assert use_shared_decode(meta) == (decode == "shared")
    if decode == "shared":  # opt-in (the default decode runs BGMV, batch-invariant)
        monkeypatch.setattr(variants, "_policy", "shared")
    x, ys = inputs(meta, dtype)
    u_ref, y_ref = per_module(x, ys, pools, meta, "torch")
    u_one, y_one = per_module(x, ys, pools, meta, "triton")
    u, outs = fused(x, ys, pools, meta, "triton")
    assert_close(u, u_ref, dtype if dtype == torch.float32 else torch.float32)
    assert_close(u, u_one, torch.float32)
    untouched = torch.tensor([s == -1 for s in meta.token_slots.tolist()])
    for s, (out, ref, one, y) in enumerate(zip(outs, y_ref, y_one, ys)):
        assert_close(out, ref, dtype)
        assert_close(out, one, dtype)
        assert torch.equal(out[untouched], y[untouched]), f"slice {s} touched rows without an adapter"
        empty = torch.tensor([RANKS[s][t] == 0 if t >= 0 else False for t in meta.token_slots.tolist()])
        assert torch.equal(out[empty], y[empty]), f"slice {s} touched rows of a slot empty there"
    assert u[2, :, :].abs().sum() > 0 and EPS[dtype] > 0


@pytest.mark.skipif(not tk.INTERPRETED, reason="CPU Triton tests need TRITON_INTERPRET=1")
def test_strided_outputs_and_two_slices() -> None:
    """gate/up: two slices written into column blocks of one (T, 40 + 24) tensor (strided views)."""
    pools, meta = make_group(torch.float32)[:2], build_decode_meta(ROW_SLOTS)
    x, ys = inputs(meta, torch.float32)
    both = torch.cat(ys[:2], dim=1)  # (T, 64)
    views = [both[:, :40], both[:, 40:]]
    u = lora_shrink_slices(x, pools, meta, backend="triton")
    lora_expand_slices(views, u, pools, meta, backend="triton")
    _, y_ref = per_module(x, ys[:2], pools, meta, "torch")
    assert_close(both, torch.cat(y_ref, dim=1), torch.float32)


def test_pools_that_do_not_agree_are_refused() -> None:
    pools = make_group(torch.float32)
    other = LoraPool(H_IN + 1, 8, budget_bytes=1 << 16, num_slots=4, rank_capacity=CAP)
    meta = build_decode_meta([0])
    with pytest.raises(ShapeError, match="only pools that agree form a group"):
        lora_shrink_slices(torch.zeros(1, H_IN), [pools[0], other], meta, backend="torch")
    with pytest.raises(ShapeError, match="1 to 3 pools"):
        lora_shrink_slices(torch.zeros(1, H_IN), [*pools, pools[0]], meta, backend="torch")
