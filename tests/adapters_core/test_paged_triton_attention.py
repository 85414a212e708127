"""Paged steps with the Triton decode attention forced on (kernels/paged_attention.py; TRITON_INTERPRET=1 on the
CPU) equal the torch path (gather + SDPA) from the same pool: logits within 1e-4, greedy tokens exactly, the
same keys and values written. Families: Llama (GQA, full attention) and Gemma 2 (softcapping, sliding windows);
partitions of 16 keys so that the longer rows cross several. Eager packed steps (`paged_step`: prefill chunks
beside decode rows) and the static decode step (static_decode.py, the CUDA-graph one) both; a batch with a
prefix-tuning row falls back to the torch path for its decode rows (the kernel has no prefix keys). On CUDA
(gpu marker) the same with the compiled kernels, and no compile after the warm-up."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from arch_configs import FAMILIES, VOCAB
from paged_helpers import MiniEngine, Oracles, restore_pool, snapshot_pool

from adapters_core.multi import MultiAdapterModel
from adapters_core.paged import SeqChunk, StepPlan
from adapters_core.paged.graphs import DecodeGraphRunner
from kernels import paged_attention as pk

triton = pytest.importorskip("triton")
TOL = 1e-4
ROWS: list[str | None] = ["LoRA", None, "IA3", "LoRA", None]


@contextmanager
def attention_backend(name: str) -> Iterator[None]:
    before = os.environ.get(pk.ENV_VAR)
    os.environ[pk.ENV_VAR] = name
    try:
        yield
    finally:
        if before is None:
            del os.environ[pk.ENV_VAR]
        else:
            os.environ[pk.ENV_VAR] = before


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows per launch of the Triton kernel; partitions of 16 keys (rows of up to ~40 keys here)."""
    from kernels import triton_paged_attention as tpa

    calls: list[int] = []
    real = tpa.decode_attention
    monkeypatch.setattr(
        tpa, "decode_attention", lambda q, *a, **kw: (calls.append(q.shape[0]), real(q, *a, **kw))[1]
    )
    monkeypatch.setattr(pk, "PARTITION_KEYS", 16)
    return calls


@pytest.fixture(scope="module", params=["llama", "gemma2"])
def oracles(request: Any, tmp_path_factory: Any) -> Oracles:
    from kernels import triton_lora

    if not triton_lora.INTERPRETED:
        pytest.skip("CPU Triton tests need TRITON_INTERPRET=1")
    return Oracles(
        FAMILIES[request.param], tmp_path_factory.mktemp(request.param), ("LoRA", "IA3", "prefix tuning")
    )


def both_ways(model: Any, run: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """`run()` with the Triton attention, then again from the same pool with the torch one: (got, want), and
    the pool left as the torch run wrote it, which must equal what the Triton run wrote."""
    before = snapshot_pool(model)
    with attention_backend("triton"):
        got = run()
    after_triton = snapshot_pool(model)
    restore_pool(model, before)
    with attention_backend("torch"):
        want = run()
    for a, b in zip(after_triton, snapshot_pool(model)):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)
    return got, want


def engine_with(model: Any, names: list[str | None], seed: int) -> MiniEngine:
    g = torch.Generator().manual_seed(seed)
    engine = MiniEngine(model, num_blocks=96, block_size=4, chunk_sizes=[7, 12])
    for r, name in enumerate(names):
        n = int(torch.randint(1, 30, (1,), generator=g))  # up to ~40 keys by the end: 3 partitions of 16
        engine.join(r, name, torch.randint(3, VOCAB, (n,), generator=g).tolist())
    return engine


@torch.no_grad()
def test_packed_steps_with_triton_attention_equal_torch_path(oracles: Oracles, launches: list[int]) -> None:
    model = oracles.multi
    engine = engine_with(model, ROWS, seed=1)
    real = model.paged_step
    decoded = 0

    def step(plan: StepPlan) -> torch.Tensor:
        nonlocal decoded
        got, want = both_ways(model, lambda: real(plan))
        torch.testing.assert_close(got, want, atol=TOL, rtol=0)
        assert torch.equal(got.argmax(-1), want.argmax(-1))
        decoded += sum(len(c.tokens) == 1 for c in plan.chunks)
        return want

    model.paged_step = step  # type: ignore[method-assign]
    try:
        for _ in range(7):
            engine.step(lambda r, logits: int(logits.argmax()))
    finally:
        del model.paged_step
    assert decoded >= 15 and launches and all(n >= 1 for n in launches)


@torch.no_grad()
def test_static_step_with_triton_attention_equals_torch_path(oracles: Oracles, launches: list[int]) -> None:
    """The static decode step (5 rows in a bucket of 8: padding rows over the scratch block) on the kernel
    against `paged_step` on the torch path, several steps (rows start new blocks on the way)."""
    model = oracles.multi
    engine = engine_with(model, ROWS, seed=2)
    while any(row["done"] < len(row["stream"]) - 1 for row in engine.rows.values()):
        engine.step(lambda r, logits: int(logits.argmax()))
    runner = DecodeGraphRunner(model, max_batch=8, use_graphs=False)
    for _ in range(4):
        chunks = []
        for seq_id, row in engine.rows.items():
            done, stream = row["done"], row["stream"]
            while len(row["blocks"]) * engine.block_size < done + 1:
                row["blocks"].append(engine.free.pop())
            chunks.append(SeqChunk(seq_id, row["adapter"], [stream[done]], done, list(row["blocks"])))
        plan = StepPlan(chunks)
        assert runner.why_not(plan) is None
        before = snapshot_pool(model)
        with attention_backend("triton"):
            got = runner.step(plan)
        restore_pool(model, before)
        with attention_backend("torch"):
            want = model.paged_step(plan)
        torch.testing.assert_close(got, want, atol=TOL, rtol=0)
        assert torch.equal(got.argmax(-1), want.argmax(-1))
        for chunk, logits in zip(plan.chunks, want):
            engine.rows[chunk.seq_id]["done"] += 1
            engine.rows[chunk.seq_id]["stream"].append(int(logits.argmax()))
    assert 8 in launches  # the bucket, padding rows included


@torch.no_grad()
def test_a_prefix_row_sends_its_decode_batch_to_the_torch_path(oracles: Oracles, launches: list[int]) -> None:
    """Prefix tuning's keys are not in the pool: a decode batch holding such a row must not take the kernel
    (which would leave them out), and its logits still equal the torch path's."""
    if oracles.fam.name != "llama":
        pytest.skip("the fall-back does not depend on the family")
    model = oracles.multi
    engine = engine_with(model, ["prefix tuning", "LoRA"], seed=3)
    while any(row["done"] < len(row["stream"]) - 1 for row in engine.rows.values()):
        engine.step(lambda r, logits: int(logits.argmax()))
    chunks = []
    for seq_id, row in engine.rows.items():
        done = row["done"]
        while len(row["blocks"]) * engine.block_size < done + 1:
            row["blocks"].append(engine.free.pop())
        chunks.append(SeqChunk(seq_id, row["adapter"], [row["stream"][done]], done, list(row["blocks"])))
    launches.clear()
    got, want = both_ways(model, lambda: model.paged_step(StepPlan(chunks)))
    assert launches == []
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    got, want = both_ways(model, lambda: model.paged_step(StepPlan(chunks[1:])))  # the LoRA row alone
    assert launches == [1] * model.model.config.num_hidden_layers  # one launch per layer
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)


# -- CUDA, compiled --------------------------------------------------------------------------------------


def _compiled(kernel: Any) -> int:
    return sum(len(cache[0]) for cache in kernel.device_caches.values())


@pytest.mark.gpu
@torch.no_grad()
def test_cuda_steps_on_the_compiled_kernel_equal_torch_path(tmp_path_factory: Any) -> None:
    """On CUDA (compiled Triton): the packed and the static steps of a Llama on the kernel equal the torch path,
    and after init_kv_cache's warm-up no step compiles a new attention variant."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from kernels import triton_lora
    from kernels import triton_paged_attention as tpa

    if triton_lora.INTERPRETED:
        pytest.skip("compiled kernels only: TRITON_INTERPRET=0")
    torch.backends.cuda.matmul.allow_tf32 = False
    fam, root = FAMILIES["llama"], tmp_path_factory.mktemp("gpu")
    Oracles(fam, root, ("LoRA", "IA3"))  # saves the perturbed adapters under root/<method>
    model = MultiAdapterModel(fam.build().cuda())
    for method in ("LoRA", "IA3"):
        model.add(method, root / method)
    with attention_backend("triton"):
        engine = engine_with(model, ROWS, seed=4)  # init_kv_cache warms the attention variants up
    kernels_ = [tpa._paged_attn_partition_kernel, tpa._paged_attn_merge_kernel]
    warmed = [_compiled(k) for k in kernels_]
    assert all(warmed)
    real = model.paged_step

    def step(plan: StepPlan) -> torch.Tensor:
        got, want = both_ways(model, lambda: real(plan))
        torch.testing.assert_close(got, want, atol=TOL, rtol=0)
        assert torch.equal(got.argmax(-1), want.argmax(-1))
        return want

    model.paged_step = step  # type: ignore[method-assign]
    try:
        for _ in range(8):
            engine.step(lambda r, logits: int(logits.argmax()))
    finally:
        del model.paged_step
    runner = DecodeGraphRunner(model, max_batch=8, use_graphs=False)
    chunks = []
    for seq_id, row in engine.rows.items():
        done = row["done"]
        if done < len(row["stream"]) - 1:
            continue
        while len(row["blocks"]) * engine.block_size < done + 1:
            row["blocks"].append(engine.free.pop())
        chunks.append(SeqChunk(seq_id, row["adapter"], [row["stream"][done]], done, list(row["blocks"])))
    plan = StepPlan(chunks)
    got, want = both_ways(model, lambda: runner.step(plan))
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    torch.cuda.synchronize()
    assert [_compiled(k) for k in kernels_] == warmed
