"""Shared inputs and oracles of the kernel tests: adversarial batches and a naive per-token loop.

Tolerances (the kernels and the reference do the same operations; only float32 summation order differs):
- float32: rtol 1e-5, atol 1e-5 x max|expected|.
- float16 / bfloat16: 2 ulps of the dtype, relative to max|expected| (atol) and per element (rtol). A
  different summation order can flip the rounding of u (to the weights' dtype) and of y by one ulp each;
  under TRITON_INTERPRET=1, Triton 3.9 also truncates float32 -> bfloat16 casts where CUDA rounds to nearest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kernels import BatchMeta, IA3Pool, LoraPool, build_decode_meta, build_prefill_meta

EPS = {torch.float32: 1e-5, torch.float16: 2 * 2.0**-10, torch.bfloat16: 2 * 2.0**-7}

Adapter = tuple[Tensor, Tensor, float]


@dataclass(frozen=True)
class Case:
    """One batch: `ranks[slot]` (0 = empty slot), one slot and one prefill length per row."""

    name: str
    h_in: int
    h_out: int
    ranks: tuple[int, ...]
    row_slots: tuple[int, ...]
    row_lengths: tuple[int, ...]

    def meta(self, decode: bool) -> BatchMeta:
        if decode:
            return build_decode_meta(list(self.row_slots))
        return build_prefill_meta(list(self.row_slots), list(self.row_lengths))


def _zipf_slots(n_rows: int, n_slots: int, seed: int) -> tuple[int, ...]:
    gen = torch.Generator().manual_seed(seed)
    weights = 1.0 / torch.arange(1, n_slots + 1, dtype=torch.float64) ** 1.3
    return tuple(torch.multinomial(weights, n_rows, replacement=True, generator=gen).tolist())


def _lengths(n_rows: int, seed: int, longest: int = 19) -> tuple[int, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(1, longest + 1, (n_rows,), generator=gen).tolist())


CASES = [
    Case("one_adapter", 64, 48, (16,), (0,) * 10, _lengths(10, 1)),
    Case("all_distinct", 48, 40, tuple(range(1, 13)), tuple(range(11, -1, -1)), _lengths(12, 2)),
    Case("zipf", 40, 56, (8, 4, 16, 2, 8, 32, 1, 12), _zipf_slots(24, 8, 3), _lengths(24, 3, 9)),
    # -1 rows, an empty slot (1), rows of slot 2 scattered among others.
    Case("no_adapter_rows", 72, 40, (8, 0, 24), (-1, 2, 0, -1, 1, 2, -1, 0, 2), _lengths(9, 4)),
    Case(
        "ranks_1_to_128",
        36,
        24,
        (1, 2, 3, 7, 16, 17, 33, 64, 100, 128),
        tuple(range(10)) * 2,
        _lengths(20, 5, 5),
    ),
    Case("odd_sizes", 17, 33, (5, 3), (1, 0, 1, -1, 0), (1, 31, 2, 3, 17)),
    Case("all_no_adapter", 32, 32, (8,), (-1, -1, -1), (2, 3, 1)),
    Case("empty_batch", 32, 24, (4, 8), (), ()),
]


def make_adapters(case: Case, seed: int = 0) -> list[Adapter | None]:
    """Float32 adapters with O(1) outputs: A ~ N(0, 1/H_in), B ~ N(0, 1/r), distinct scales."""
    gen = torch.Generator().manual_seed(seed)
    out: list[Adapter | None] = []
    for slot, r in enumerate(case.ranks):
        if r == 0:
            out.append(None)
            continue
        a = torch.randn(r, case.h_in, generator=gen) / case.h_in**0.5
        b = torch.randn(case.h_out, r, generator=gen) / r**0.5
        out.append((a, b, 0.5 + 0.25 * slot))
    return out


def make_pool(
    case: Case, adapters: list[Adapter | None], dtype: torch.dtype, device: str = "cpu"
) -> LoraPool:
    return LoraPool.from_adapters(adapters, dtype=dtype, rank_capacity=max(case.ranks), device=device)


def fragmented_pool(case: Case, adapters: list[Adapter | None], dtype: torch.dtype) -> LoraPool:
    """A pool whose free pages are runs of 2 when the adapters load, so ranks > 2 get scattered pages."""
    fillers = sum(ad[0].shape[0] for ad in adapters if ad is not None)  # rank-2 fillers, every other evicted
    n_slots, cap = len(adapters) + fillers, max(case.ranks)
    page_bytes = (case.h_in + case.h_out) * torch.finfo(dtype).bits // 8
    budget = n_slots * (cap + 3) * 8 + 2 * fillers * page_bytes
    pool = LoraPool(
        case.h_in, case.h_out, budget_bytes=budget, num_slots=n_slots, rank_capacity=cap, dtype=dtype
    )
    assert pool.num_pages == 2 * fillers
    for i in range(fillers):
        pool.load(len(adapters) + i, torch.ones(2, case.h_in), torch.ones(case.h_out, 2), 1.0)
    assert pool.free_bytes == 0
    for i in range(0, fillers, 2):
        pool.evict(len(adapters) + i)
    for slot, ad in enumerate(adapters):
        if ad is not None:
            pool.load(slot, *ad)
    return pool


def make_inputs(case: Case, meta: BatchMeta, dtype: torch.dtype, seed: int = 1) -> tuple[Tensor, Tensor]:
    """x (T, H_in) and y (T, H_out) on the metadata's device."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(meta.num_tokens, case.h_in, generator=gen).to(meta.device, dtype)  # (T, H_in)
    y = torch.randn(meta.num_tokens, case.h_out, generator=gen).to(meta.device, dtype)  # (T, H_out)
    return x, y


def naive_lora(
    y: Tensor, x: Tensor, adapters: list[Adapter | None], token_slots: Tensor, w_dtype: torch.dtype
) -> Tensor:
    """y + LoRA, one token at a time in float64, with the spec's roundings (operands in `w_dtype`, u too)."""
    out = y.double().clone()  # (T, H_out)
    for t, slot in enumerate(token_slots.tolist()):
        if slot < 0 or adapters[slot] is None:
            continue
        a, b, scale = adapters[slot]
        rnd = lambda v: v.to(w_dtype).double()  # noqa: E731
        u = rnd(x[t]) @ rnd(a).T  # (r,)
        out[t] += scale * (rnd(u) @ rnd(b).T)
    return out


def ia3_vectors(n_slots: int, features: int, seed: int = 2) -> list[Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    vecs: list[Tensor | None] = [1.0 + 0.5 * torch.randn(features, generator=gen) for _ in range(n_slots)]
    vecs[1] = None  # an empty slot: a no-op
    return vecs


def make_ia3_pool(vectors: list[Tensor | None], dtype: torch.dtype, device: str = "cpu") -> IA3Pool:
    features = next(v for v in vectors if v is not None).numel()
    pool = IA3Pool(features, budget_bytes=1 << 20, num_slots=len(vectors), dtype=dtype, device=device)
    for slot, v in enumerate(vectors):
        if v is not None:
            pool.load(slot, v)
    return pool


def naive_ia3(t: Tensor, vectors: list[Tensor | None], token_slots: Tensor, w_dtype: torch.dtype) -> Tensor:
    out = t.double().clone()
    for i, slot in enumerate(token_slots.tolist()):
        if slot >= 0 and vectors[slot] is not None:
            out[i] = out[i] * vectors[slot].to(w_dtype).double()
    return out


def assert_close(actual: Tensor, expected: Tensor, dtype: torch.dtype) -> None:
    """Within the module docstring's tolerance for `dtype`."""
    eps = EPS[dtype]
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual.double(), expected.double(), rtol=eps, atol=eps * max(scale, 1e-30))
