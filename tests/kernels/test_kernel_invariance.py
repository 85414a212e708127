"""A decode token's adapter result does not depend on its step (issue 16: greedy tokens independent of
batch-mates), now that a paged step packs decode tokens beside prefill chunks.

One target row (fixed input, base output and adapter) is run alone (a decode batch of one) and then inside
many steps: decode batches of 1..256 rows, and mixed steps (the engine's packed stream: random prefill chunks of
2..40 tokens and random decode mates, decode rows first or shuffled between the chunks, random adapters
including none, an empty slot and LoRA of ranks 1..33). Its LoRA (`lora_apply`), IA3 (both sides) and sibling
group (multi-slice shrink, then each member's expand as adapters_core/multi/fused.py runs it, and the
multi-slice expand) results must be bit-identical to the row alone, on the torch backend (the CPU default:
kernels/grouped.py, and the reference where grouped declines) in float32 and bfloat16, and under
TRITON_INTERPRET=1 for the Triton kernels (small shapes: the interpreter is slow).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from kernels import (
    IA3Pool,
    LoraPool,
    build_decode_meta,
    build_prefill_meta,
    ia3_scale_input,
    ia3_scale_output,
    lora_apply,
    lora_expand,
)
from kernels import triton_lora as tk
from kernels.metadata import BatchMeta
from kernels.slices import lora_expand_slices, lora_shrink_slices

interpreted = pytest.mark.skipif(not tk.INTERPRETED, reason="CPU Triton tests need TRITON_INTERPRET=1")

RANKS = (3, 16, 8, 1, 33)  # slots 0-4; slot 5 is empty
SIBLING_RANKS = (5, 2, 9, 16, 4)  # the other slices of a group: other ranks and weights per slot
NUM_SLOTS = len(RANKS) + 1
DTYPES = [torch.float32, torch.bfloat16]


def lora_pool(
    h_in: int, h_out: int, ranks: tuple[int, ...], dtype: torch.dtype, seed: int, device: str = "cpu"
) -> LoraPool:
    gen = torch.Generator().manual_seed(seed)
    adapters: list[tuple[torch.Tensor, torch.Tensor, float] | None] = [
        (torch.randn(r, h_in, generator=gen), torch.randn(h_out, r, generator=gen), 0.5 + s / 4)
        for s, r in enumerate(ranks)
    ]
    return LoraPool.from_adapters([*adapters, None], dtype=dtype, rank_capacity=64, device=device)


def ia3_pool(features: int, seed: int, device: str = "cpu") -> IA3Pool:
    gen = torch.Generator().manual_seed(seed)
    pool = IA3Pool(features, budget_bytes=1 << 20, num_slots=NUM_SLOTS, dtype=torch.float32, device=device)
    for slot in range(NUM_SLOTS - 1):
        pool.load(slot, 1.0 + 0.5 * torch.randn(features, generator=gen))
    return pool


def steps(target: int, rng: random.Random, decode_sizes: tuple[int, ...], mixed: int) -> Iterator[tuple]:
    """(row slots, row lengths, index of the target row): the target alone first, then decode batches of
    `decode_sizes` rows, then `mixed` packed steps of prefill chunks and decode rows."""
    yield [target], [1], 0
    for n in decode_sizes:
        slots = [rng.randrange(-1, NUM_SLOTS) for _ in range(n)]
        at = rng.randrange(n)
        slots[at] = target
        yield slots, [1] * n, at
    for i in range(mixed):
        decode = [(rng.randrange(-1, NUM_SLOTS), 1) for _ in range(rng.randint(0, 12))]
        at = rng.randrange(len(decode) + 1)
        decode.insert(at, (target, 1))
        chunks = [(rng.randrange(-1, NUM_SLOTS), rng.randint(2, 40)) for _ in range(rng.randint(1, 3))]
        if i % 2:  # the engine's order: decode rows first, then prefill chunks
            rows = decode + chunks
        else:  # any order: chunks between and before the decode rows
            rows = decode + chunks
            rng.shuffle(rows)
            at = next(j for j, row in enumerate(rows) if row is decode[at])
        yield [s for s, _ in rows], [n for _, n in rows], at


class Row:
    """The target row's own tensors, planted into every step at its token."""

    def __init__(self, h_in: int, h_out: int, dtype: torch.dtype, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(h_in, generator=gen).to(dtype)
        self.y = torch.randn(h_out, generator=gen).to(dtype)
        self.gen = gen

    def plant(self, meta: BatchMeta, token: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(meta.num_tokens, self.x.numel(), generator=self.gen).to(dtype)
        y = torch.randn(meta.num_tokens, self.y.numel(), generator=self.gen).to(dtype)
        x[token], y[token] = self.x, self.y
        return x, y


def assert_invariant(
    results: Any,
    target: int,
    dtype: torch.dtype,
    h_in: int,
    h_out: int,
    decode_sizes: tuple,
    mixed: int,
    device: str = "cpu",
) -> int:
    """Runs `results(meta, x, y, token) -> {name: row tensor}` over every step; every entry must equal the
    target alone, bit for bit. Returns how many steps ran."""
    rng = random.Random(1000 + target)
    row = Row(h_in, h_out, dtype, seed=target + 7)
    alone: dict[str, torch.Tensor] | None = None
    count = 0
    for slots, lengths, at in steps(target, rng, decode_sizes, mixed):
        meta = build_prefill_meta(slots, lengths) if any(n > 1 for n in lengths) else build_decode_meta(slots)
        token = sum(lengths[:at])
        x, y = (t.to(device) for t in row.plant(meta, token, dtype))
        meta = meta.to(device)
        got = results(meta, x, y, token)
        if alone is None:
            alone = got
            if target >= 0 and target != NUM_SLOTS - 1:  # the adapters change the row (else nothing is shown)
                assert all(not torch.equal(v.cpu(), row.y) for k, v in got.items() if k.startswith("lora"))
        for name, value in got.items():
            assert torch.equal(value, alone[name]), (
                f"slot {target}: {name} of the row differs in a step of rows {list(zip(slots, lengths))}"
            )
        count += 1
    return count


def all_results(
    backend: str, pools: list[LoraPool], ia3_out: IA3Pool, ia3_in: IA3Pool
) -> Any:  # the ops the multi-adapter layers run, as they run them
    def results(meta: BatchMeta, x: torch.Tensor, y: torch.Tensor, token: int) -> dict[str, torch.Tensor]:
        out = {"lora": lora_apply(y.clone(), x, pools[0], meta, backend=backend)[token]}
        out["ia3_out"] = ia3_scale_output(y.clone(), ia3_out, meta, backend=backend)[token]
        out["ia3_in"] = ia3_scale_input(x, ia3_in, meta, backend=backend)[token]
        u = lora_shrink_slices(x, pools, meta, backend=backend, zeroed=False)  # (n, T, R), as fused.py
        for s, pool in enumerate(pools):
            out[f"lora_fused_member{s}"] = lora_expand(y.clone(), u[s], pool, meta, backend=backend)[token]
        ys = [y.clone() for _ in pools]
        lora_expand_slices(ys, u, pools, meta, backend=backend)
        for s, ys_s in enumerate(ys):
            out[f"lora_fused_slices{s}"] = ys_s[token]
        return out

    return results


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("target", [1, 0, 4, -1, NUM_SLOTS - 1], ids=["r16", "r3", "r33", "none", "empty"])
def test_torch_backend_decode_token_alone_equals_in_any_step(dtype: torch.dtype, target: int) -> None:
    h_in, h_out = 96, 80  # MKL's row results depend on the row count and N at these widths
    pools = [
        lora_pool(h_in, h_out, r, dtype, seed) for seed, r in enumerate((RANKS, SIBLING_RANKS, RANKS[::-1]))
    ]
    results = all_results("torch", pools, ia3_pool(h_out, 1), ia3_pool(h_in, 2))
    assert assert_invariant(results, target, dtype, h_in, h_out, (1, 2, 3, 7, 64, 256), mixed=30) == 37


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_torch_backend_wide_layer_reads_large_adapters_in_place_and_stays_invariant(
    dtype: torch.dtype,
) -> None:
    """At 1024 x 1024 a rank-33 adapter is past grouped's gather limit (read in place, one bmm per adapter)
    while rank 16 is gathered per token: both invariant, whatever mix of them a step holds."""
    h = 1024
    pool = lora_pool(h, h, RANKS, dtype, 0)

    def results(meta: BatchMeta, x: torch.Tensor, y: torch.Tensor, token: int) -> dict[str, torch.Tensor]:
        return {"lora": lora_apply(y.clone(), x, pool, meta, backend="torch")[token]}

    for target in (4, 1):
        assert assert_invariant(results, target, dtype, h, h, (2, 7, 33), mixed=8) == 12


@interpreted
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("target", [1, 0], ids=["r16", "r3"])
def test_triton_decode_token_alone_equals_in_any_step(dtype: torch.dtype, target: int) -> None:
    h_in, h_out = 48, 40  # BLOCK_K 64 / BLOCK_N 64 (bgmv) and 64 / 64 (sgmv): small for the interpreter
    pools = [
        lora_pool(h_in, h_out, r, dtype, seed) for seed, r in enumerate((RANKS, SIBLING_RANKS, RANKS[::-1]))
    ]
    results = all_results("triton", pools, ia3_pool(h_out, 1), ia3_pool(h_in, 2))
    # decode batches up to 256 rows: tests/kernels/test_kernel_serving.py; here the mixed steps
    assert assert_invariant(results, target, dtype, h_in, h_out, (2, 7), mixed=6) == 9


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or tk.INTERPRETED, reason="needs CUDA, compiled kernels")
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_gpu_decode_token_alone_equals_in_any_step(dtype: torch.dtype) -> None:
    """The compiled kernels (tl.dot tiles on tensor cores in the segment launch, BLOCK_M from the longest
    prompt chunk) at serving widths."""
    h_in, h_out = 4096, 1024
    dev = "cuda"
    pools = [lora_pool(h_in, h_out, r, dtype, seed, dev) for seed, r in enumerate((RANKS, SIBLING_RANKS))]
    results = all_results("triton", pools, ia3_pool(h_out, 1, dev), ia3_pool(h_in, 2, dev))
    for target in (1, 4):
        assert assert_invariant(results, target, dtype, h_in, h_out, (2, 64, 256), 40, dev) == 44


def test_mixed_metadata_splits_one_token_rows_from_longer_ones() -> None:
    """The docstring's example of `MixedSplit`, and decode rows first giving a window of just themselves."""
    meta = build_prefill_meta([2, 0, 2, -1], [1, 5, 1, 1])
    split = meta.split
    assert split is not None and not meta.decode
    assert split.start == 0 and split.per_token.decode and split.per_token.num_tokens == 8
    assert split.per_token.token_slots.tolist() == [2, -1, -1, -1, -1, -1, 2, -1]
    assert split.segments.token_slots.tolist() == [-1, 0, 0, 0, 0, 0, -1, -1]
    assert split.segments.segments() == [(0, 0, 5)] and not split.segments.decode
    first = build_prefill_meta([3, 1, 0, 2], [1, 1, 4, 6]).split
    assert first is not None and (first.start, first.per_token.num_tokens) == (0, 2)
    assert [rows for rows, _ in first.parts] == [slice(0, 2), slice(None)]
    late = build_prefill_meta([0, 3, 1], [4, 1, 1]).split
    assert late is not None and (late.start, late.per_token.row_slots) == (4, (3, 1))
    assert build_prefill_meta([0, 1], [3, 2]).split is None  # no one-token row: one segment launch
    assert build_decode_meta([0, 1]).split is None
    only_ones = build_prefill_meta([0, -1], [1, 1]).launch_parts()
    assert len(only_ones) == 1 and only_ones[0][1].decode  # no longer rows: nothing for the segment launch
