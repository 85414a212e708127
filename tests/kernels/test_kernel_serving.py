"""What serving needs of the kernels beyond the math (issue 18), checked on the CPU:

- every Triton launch group runs under its tensors' device (`device_guard`), not the thread's current one;
- no batch the engine can form launches a variant `kernels.warmup` did not compile (so nothing compiles
  mid-serving): recorded on the real launch arguments, constexprs and Triton's integer specialisations, for
  the single-module kernels, the multi-slice shrink of sibling groups and (opt-in policy) shared decode;
- a decode row's output is bit-identical alone and inside batches of 1..256 rows (reference and interpreter),
  through the multi-slice kernels too (bit-identical to the single-module BGMV).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from kernels import (
    LoraPool,
    build_decode_meta,
    build_prefill_meta,
    dispatch,
    ia3_scale_input,
    ia3_scale_output,
    lora_apply,
    lora_expand,
    reference,
    variants,
)
from kernels import triton_fused as tf
from kernels import triton_ia3 as ti
from kernels import triton_lora as tk
from kernels.metadata import BatchMeta
from kernels.slices import lora_expand_slices, lora_shrink_slices
from kernels.variants import LoraGeometry, Stage, serving_variants, variant_key
from kernels.warmup import warmup

interpreted = pytest.mark.skipif(not tk.INTERPRETED, reason="CPU Triton tests need TRITON_INTERPRET=1")

# -- device ---------------------------------------------------------------------------------------------


def test_the_guard_of_a_cuda_tensor_is_its_device() -> None:
    guard = dispatch.device_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1  # built without touching CUDA
    assert isinstance(dispatch.device_guard(torch.device("cpu")), contextlib.nullcontext)


@interpreted
def test_every_triton_launch_group_enters_the_weights_device_once(monkeypatch: pytest.MonkeyPatch) -> None:
    entered: list[torch.device] = []

    def guard(device: torch.device) -> contextlib.AbstractContextManager[object]:
        entered.append(device)
        return contextlib.nullcontext()

    monkeypatch.setattr(dispatch, "device_guard", guard)
    pool = LoraPool.from_adapters([(torch.randn(2, 16), torch.randn(16, 2), 1.0)], dtype=torch.float32)
    ia3 = _ia3_pool(16)
    meta = build_decode_meta([0, -1, 0])
    x, y = torch.randn(3, 16), torch.randn(3, 16)
    lora_apply(y, x, pool, meta, backend="triton")
    assert entered == [pool.weights.device]  # shrink and expand share one guard
    ia3_scale_output(y, ia3, meta, backend="triton")
    ia3_scale_input(x, ia3, meta, backend="triton")
    assert len(entered) == 3


@pytest.mark.gpu
@pytest.mark.skipif(
    torch.cuda.device_count() < 2 or tk.INTERPRETED, reason="needs two CUDA devices, compiled"
)
def test_a_pool_on_the_second_gpu_runs_there_while_the_first_is_current() -> None:
    torch.cuda.set_device(0)
    dev = torch.device("cuda", 1)
    pool = LoraPool.from_adapters(
        [(torch.randn(8, 256), torch.randn(512, 8), 0.5), (torch.randn(16, 256), torch.randn(512, 16), 2.0)],
        dtype=torch.float32,
        device=dev,
    )
    for meta in (
        build_decode_meta([1, -1, 0, 1], device=dev),
        build_prefill_meta([1, 0], [5, 3], device=dev),
    ):
        x = torch.randn(meta.num_tokens, 256, device=dev)
        y = torch.randn(meta.num_tokens, 512, device=dev)
        want = lora_apply(y.clone(), x, pool, meta, backend="torch")
        got = lora_apply(y.clone(), x, pool, meta, backend="triton")
        torch.cuda.synchronize(dev)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert torch.cuda.current_device() == 0


# -- variants -------------------------------------------------------------------------------------------

GEOMETRY = LoraGeometry(
    in_features=24, out_features=40, rank_capacity=32, weight_dtype=torch.float32, act_dtype=torch.float32
)
MAX_BATCH_TOKENS = 80  # past 64, where BLOCK_M saturates


class LaunchRecorder:
    """Stands in for a Triton kernel: records what a launch would compile (constexprs, argument dtypes and
    alignment, and Triton's specialisation of the integers not marked `do_not_specialize`), runs nothing."""

    def __init__(self, name: str, kernel: Any, seen: set[tuple[Any, ...]]) -> None:
        self.name, self.seen = name, seen
        self.arg_names: list[str] = kernel.arg_names
        dns = getattr(kernel, "do_not_specialize", None) or getattr(kernel, "kwargs", {}).get(
            "do_not_specialize"
        )
        self.unspecialised = set(dns or ())

    def __getitem__(self, grid: Any) -> Any:
        def launch(*args: Any, **constexprs: Any) -> None:
            sig = []
            for name, arg in zip(self.arg_names, args):
                if isinstance(arg, torch.Tensor):
                    sig.append((name, arg.dtype, arg.data_ptr() % 16 == 0))
                elif name not in self.unspecialised:
                    sig.append((name, arg == 1, arg % 16 == 0))
            self.seen.add((self.name, tuple(sig), tuple(sorted(constexprs.items()))))

        return launch


@contextlib.contextmanager
def recording(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[tuple[Any, ...]]]:
    seen: set[tuple[Any, ...]] = set()
    for module, names in (
        (tk, ("sgmv_shrink", "sgmv_expand", "bgmv_shrink", "bgmv_expand")),
        (tf, ("sgmv_shrink_slices", "bgmv_shrink_slices", "sgmv_expand_slices", "bgmv_expand_slices")),
        (ti, ("ia3_scale",)),
    ):
        for name in names:
            attr = f"_{name}_kernel"
            monkeypatch.setattr(module, attr, LaunchRecorder(name, getattr(module, attr), seen))
    yield seen
    monkeypatch.undo()


def engine_batches(max_tokens: int) -> Iterator[BatchMeta]:
    """Every kind of batch the engine forms, for every token count: decode rows (padded path, or a paged
    step of decode tokens only), one prompt, equal-length padded rows, and paged steps mixing one prompt
    chunk with decode tokens, each under varied slots (rows of one slot merge into one segment)."""
    rng = random.Random(0)
    for t in range(1, max_tokens + 1):
        yield build_decode_meta([rng.choice([-1, 0, 1]) for _ in range(t)])
        yield build_prefill_meta([0], [t])
        for rows in {d for d in (2, 3, 4) if t % d == 0}:
            yield build_prefill_meta([rng.choice([-1, 0, 1]) for _ in range(rows)], [t // rows] * rows)
        if t > 1:
            for chunk in {1 + (t - 1) // 2, t - 1}:
                decode_slots = [rng.choice([-1, 0, 1]) for _ in range(t - chunk)]
                yield build_prefill_meta([1, *decode_slots], [chunk] + [1] * (t - chunk))


def _ia3_pool(features: int) -> Any:
    from kernels import IA3Pool

    pool = IA3Pool(features, budget_bytes=4 * 8 + 2 * features * 4, num_slots=4, dtype=torch.float32)
    pool.load(0, torch.rand(features) + 0.5)
    pool.load(1, torch.rand(features) + 0.5)
    return pool


def _lora_pool(g: LoraGeometry, ranks: tuple[int, ...]) -> LoraPool:
    return LoraPool.from_adapters(
        [(torch.randn(r, g.in_features), torch.randn(g.out_features, r), 1.0) for r in ranks],
        dtype=g.weight_dtype,
        rank_capacity=g.rank_capacity,
    )


@interpreted
@pytest.mark.parametrize("policy", ["bgmv", "shared"])
def test_every_engine_batch_launches_a_warmed_up_variant(
    monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    """As a layer serves: the single-module ops, and a sibling group's multi-slice shrink followed by its
    members' own expands (adapters_core/multi/fused.py); the warm-up saw the geometry as `sliced`."""
    g = GEOMETRY._replace(sliced=True)
    monkeypatch.setattr(variants, "_policy", policy)
    with recording(monkeypatch) as warmed:
        warmup([g], max_batch_tokens=MAX_BATCH_TOKENS, device="cpu")
    monkeypatch.setattr(variants, "_policy", policy)  # recording() undoes every patch on exit
    pool, sibling = _lora_pool(g, (4, 20)), _lora_pool(g, (20, 4))
    ia3_in, ia3_out = _ia3_pool(g.in_features), _ia3_pool(g.out_features)
    with recording(monkeypatch) as served:
        for meta in engine_batches(MAX_BATCH_TOKENS):
            x = torch.randn(meta.num_tokens, g.in_features, dtype=g.act_dtype)
            y = torch.randn(meta.num_tokens, g.out_features, dtype=g.act_dtype)
            x = ia3_scale_input(x, ia3_in, meta, backend="triton")
            lora_apply(y, x, pool, meta, backend="triton")
            u = lora_shrink_slices(x, [pool, sibling], meta, backend="triton")  # (2, T, R)
            lora_expand(y, u[1], sibling, meta, backend="triton")
            ia3_scale_output(y, ia3_out, meta, backend="triton")
    kernels = {"sgmv_shrink", "sgmv_expand", "bgmv_shrink", "bgmv_expand", "ia3_scale"}
    assert {s[0] for s in served} == kernels | {"sgmv_shrink_slices", "bgmv_shrink_slices"}
    wide = {s for s in served if ("BLOCK_R", 32) in s[2]}  # the shared decode's rank block (rank 20)
    assert bool(wide) == (policy == "shared")
    assert served <= warmed, f"compiled mid-serving: {sorted(served - warmed, key=str)}"


def test_variant_keys_of_every_batch_are_in_the_serving_set() -> None:
    """The pure form of the test above: the key the launchers compute, for every batch, is enumerated."""
    g = GEOMETRY
    allowed = serving_variants(g, MAX_BATCH_TOKENS)
    stages: list[tuple[Stage, int]] = [("shrink", g.in_features), ("expand", g.out_features)]
    for meta in engine_batches(MAX_BATCH_TOKENS):
        for stage, features in stages:
            key = variant_key(
                stage, features, g.weight_dtype, g.act_dtype, decode=meta.decode, max_seg_len=meta.max_seg_len
            )
            assert key in allowed, (meta.num_tokens, meta.max_seg_len, key)
    assert {v.block_m for v in allowed} == {0, 16, 32, 64}
    assert {v.block_m for v in serving_variants(g, 20)} == {0, 16, 32}  # no 64-token segment fits in 20


@interpreted
def test_warmup_launches_the_serving_set_for_real() -> None:
    launched = warmup([GEOMETRY, GEOMETRY], max_batch_tokens=MAX_BATCH_TOKENS, device="cpu")
    lora = {v for v in launched if v.kernel != "ia3_scale"}
    assert lora == serving_variants(GEOMETRY, MAX_BATCH_TOKENS)
    assert {(v.features, v.copy) for v in launched - lora} == {(24, True), (40, False)}
    sliced = GEOMETRY._replace(sliced=True)
    launched = warmup([sliced], max_batch_tokens=MAX_BATCH_TOKENS, device="cpu", ia3=False, policy="shared")
    assert launched == serving_variants(sliced, MAX_BATCH_TOKENS, "shared")
    assert {v.block_r for v in launched if v.block_m} == {16, 32}  # rank capacity 32: blocks of 16 and 32
    assert {v.kernel for v in launched} >= {"sgmv_shrink_slices", "bgmv_shrink_slices"}


# -- batch invariance -----------------------------------------------------------------------------------

BATCH_SIZES = (1, 2, 3, 7, 64, 256)


def decode_batches(
    pool: LoraPool, h_in: int, target_slot: int, dtype: torch.dtype
) -> Iterator[tuple[BatchMeta, torch.Tensor, torch.Tensor, int]]:
    """The same target row (input, base output, slot) alone and at a random place among random rows."""
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(1, h_in, generator=gen).to(dtype)
    y0 = torch.randn(1, pool.weights.out_features, generator=gen).to(dtype)
    rng = random.Random(4)
    for n in BATCH_SIZES:
        at = rng.randrange(n)
        slots = [rng.choice([-1, *range(pool.num_slots)]) for _ in range(n)]
        slots[at] = target_slot
        meta = build_decode_meta(slots)
        x, y = make_inputs_like(n, h_in, pool.weights.out_features, dtype, gen)
        x[at], y[at] = x0[0], y0[0]
        yield meta, x, y, at


def make_inputs_like(
    n: int, h_in: int, h_out: int, dtype: torch.dtype, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, h_in, generator=gen).to(dtype), torch.randn(n, h_out, generator=gen).to(dtype)


def invariance_pool(h_in: int, h_out: int, dtype: torch.dtype) -> LoraPool:
    gen = torch.Generator().manual_seed(5)
    adapters = [
        (torch.randn(r, h_in, generator=gen), torch.randn(h_out, r, generator=gen), 0.5)
        for r in (3, 16, 8, 1)
    ]
    return LoraPool.from_adapters([*adapters, None], dtype=dtype)


def assert_row_invariant(apply: Any, pool: LoraPool, h_in: int, dtype: torch.dtype) -> None:
    for slot in (1, 0):
        alone = None
        for meta, x, y, at in decode_batches(pool, h_in, slot, dtype):
            row = apply(y, x, meta)[at]
            assert not torch.equal(row, y[at])  # the adapter changes the row
            alone = row if alone is None else alone
            assert torch.equal(row, alone), f"slot {slot}: row differs in a batch of {meta.num_tokens}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_decode_row_is_batch_invariant(dtype: torch.dtype) -> None:
    h_in, h_out = 96, 80  # MKL's row results depend on the row count at these widths without the fix
    pool = invariance_pool(h_in, h_out, dtype)
    w = pool.weights

    def apply(y: torch.Tensor, x: torch.Tensor, meta: BatchMeta) -> torch.Tensor:
        u = torch.zeros(meta.num_tokens, w.rank_capacity)
        return reference.lora_expand(y.clone(), reference.lora_shrink(x, w, meta, u), w, meta)

    assert_row_invariant(apply, pool, h_in, dtype)


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_decode_row_is_batch_invariant(dtype: torch.dtype) -> None:
    h_in, h_out = 16, 16  # one K block, one N block: 256 rows stay cheap under the interpreter
    pool = invariance_pool(h_in, h_out, dtype)

    def apply(y: torch.Tensor, x: torch.Tensor, meta: BatchMeta) -> torch.Tensor:
        return lora_apply(y.clone(), x, pool, meta, backend="triton")

    assert_row_invariant(apply, pool, h_in, dtype)


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_decode_row_is_batch_invariant_and_equals_bgmv(dtype: torch.dtype) -> None:
    """A sibling group's decode (multi-slice shrink, then each member's expand as fused.py runs it, and the
    multi-slice expand) gives a row the same bits alone and in any batch, equal to the single-module BGMV."""
    h_in, h_out = 16, 16
    gen = torch.Generator().manual_seed(6)
    sibling = [
        (torch.randn(r, h_in, generator=gen), torch.randn(h_out, r, generator=gen), 2.0) for r in (5, 9, 2, 7)
    ]
    first = invariance_pool(h_in, h_out, dtype)
    cap = first.weights.rank_capacity
    # slices differ in every slot's weights and ranks (rank_pattern)
    pools = [first, LoraPool.from_adapters([*sibling, None], dtype=dtype, rank_capacity=cap)]

    def single(y: torch.Tensor, x: torch.Tensor, meta: BatchMeta) -> list[torch.Tensor]:
        return [lora_apply(y.clone(), x, p, meta, backend="triton") for p in pools]

    def fused(y: torch.Tensor, x: torch.Tensor, meta: BatchMeta) -> list[torch.Tensor]:
        u = lora_shrink_slices(x, pools, meta, backend="triton")  # (2, T, R)
        per_member = [lora_expand(y.clone(), u[s], p, meta, backend="triton") for s, p in enumerate(pools)]
        sliced = [y.clone(), y.clone()]
        lora_expand_slices(sliced, u, pools, meta, backend="triton")
        for a, b in zip(per_member, sliced):
            assert torch.equal(a, b)
        return per_member

    for slot in (1, 0):
        alone = None
        for meta, x, y, at in decode_batches(pools[0], h_in, slot, dtype):
            rows = [out[at] for out in fused(y, x, meta)]
            assert all(not torch.equal(r, y[at]) for r in rows)  # every slice's adapter changes the row
            assert all(torch.equal(a[at], b) for a, b in zip(single(y, x, meta), rows)), "fused != BGMV"
            alone = rows if alone is None else alone
            assert all(torch.equal(r, a) for r, a in zip(rows, alone)), f"batch of {meta.num_tokens}"
