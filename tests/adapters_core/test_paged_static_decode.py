"""The static decode step (adapters_core/paged/static_decode.py, graphs.py) equals `paged_step`: same logits
(float32, 1e-5) and greedy tokens for rows of LoRA, DoRA, IA3, prompt tuning and the base mixed in one bucket
with padding rows; padding rows write nowhere but the scratch block; the step reads nothing back to the host;
rows it cannot run (prefix tuning, prefill) are named; on a GPU the captured graph replays the same logits."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from arch_configs import FAMILIES, VOCAB
from paged_helpers import MiniEngine, Oracles, restore_pool, snapshot_pool
from torch.utils._python_dispatch import TorchDispatchMode

import adapters_core.multi.fused as fused
from adapters_core.multi import MultiAdapterModel
from adapters_core.multi.layers import MultiLinear
from adapters_core.paged import SeqChunk, StepPlan, attention
from adapters_core.paged.graphs import DecodeGraphRunner, batch_buckets, width_buckets
from adapters_core.paged.model_api import _state
from adapters_core.paged.static_decode import slot_reason

TOL = 1e-5
METHODS = ("LoRA", "DoRA", "IA3", "prompt tuning", "prefix tuning")
ROWS: list[str | None] = ["LoRA", None, "IA3", "DoRA", "prompt tuning"]  # 5 rows: bucket 8, 3 padding rows


@pytest.fixture(scope="module", params=["llama", "qwen2", "gemma2"])
def oracles(request: Any, tmp_path_factory: Any) -> Oracles:
    return Oracles(FAMILIES[request.param], tmp_path_factory.mktemp(request.param), METHODS)


def prefilled(model: Any, names: list[str | None], seed: int = 3) -> MiniEngine:
    """A MiniEngine whose rows have prefilled their prompts (blocks of 4, shuffled) and decode next."""
    g = torch.Generator().manual_seed(seed)
    engine = MiniEngine(model, num_blocks=64, block_size=4, chunk_sizes=[3, 5])
    for r, name in enumerate(names):
        n = int(torch.randint(2, 10, (1,), generator=g))
        engine.join(r, name, torch.randint(3, VOCAB, (n,), generator=g).tolist())
    while any(row["done"] < len(row["stream"]) - 1 for row in engine.rows.values()):
        engine.step(lambda r, logits: int(logits.argmax()))
    return engine


def decode_plan(engine: MiniEngine) -> StepPlan:
    """One decode chunk per row (every row's next stream position), blocks allocated as MiniEngine does."""
    chunks = []
    for seq_id, row in engine.rows.items():
        done, stream = row["done"], row["stream"]
        assert done == len(stream) - 1, "every row decodes"
        while len(row["blocks"]) * engine.block_size < done + 1:
            row["blocks"].append(engine.free.pop())
        chunks.append(SeqChunk(seq_id, row["adapter"], [stream[done]], done, list(row["blocks"])))
    return StepPlan(chunks)


def blocks_of(model: Any, saved: list[torch.Tensor], blocks: list[int]) -> list[torch.Tensor]:
    """The saved pool tensors' slots of `blocks` (every layer, K and V)."""
    bs = _state(model).pool.block_size
    idx = torch.tensor([b * bs + o for b in blocks for o in range(bs)])
    return [t[:, idx] for t in saved]


def compare_steps(engine: MiniEngine, runner: DecodeGraphRunner, steps: int) -> None:
    """`steps` decode steps: each runs on the static path and, from the same pool, on paged_step."""
    model = engine.model
    pool = _state(model).pool
    num_blocks, bs = pool.num_blocks, pool.block_size
    free = torch.tensor([b * bs + o for b in engine.free for o in range(bs)])
    for t in (*pool.keys, *pool.values):  # free blocks hold a sentinel: a stray write shows there
        t[:, free] = 7.0
    for _ in range(steps):
        plan = decode_plan(engine)
        assert runner.why_not(plan) is None
        before = snapshot_pool(model)
        got = runner.step(plan)
        after_static = snapshot_pool(model)
        restore_pool(model, before)
        want = model.paged_step(plan)
        after_eager = snapshot_pool(model)
        torch.testing.assert_close(got, want, atol=TOL, rtol=0)
        assert torch.equal(got.argmax(-1), want.argmax(-1))
        # The rows' blocks hold the same keys and values; every other block but the scratch block 0 is untouched.
        used = sorted({b for c in plan.chunks for b in c.block_table})
        other = [b for b in range(1, num_blocks) if b not in used]
        for s, e in zip(blocks_of(model, after_static, used), blocks_of(model, after_eager, used)):
            torch.testing.assert_close(s, e, atol=TOL, rtol=0)
        for s, b in zip(blocks_of(model, after_static, other), blocks_of(model, before, other)):
            assert torch.equal(s, b), "a padding row wrote outside the scratch block"
        for chunk, logits in zip(plan.chunks, want):
            row = engine.rows[chunk.seq_id]
            row["done"] += 1
            row["stream"].append(int(logits.argmax()))


@torch.no_grad()
def test_static_bucket_equals_paged_step_with_padding_rows(oracles: Oracles) -> None:
    engine = prefilled(oracles.multi, ROWS)
    runner = DecodeGraphRunner(oracles.multi, max_batch=8, use_graphs=False)
    plan = decode_plan(engine)
    assert runner.why_not(plan) is None
    compare_steps(engine, runner, steps=6)  # block size 4: every row starts a new block on the way


@torch.no_grad()
def test_static_step_on_triton_shares_sibling_shrinks(
    oracles: Oracles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the Triton backend (interpreter) q/k/v and gate/up share one multi-slice shrink on the static metadata
    too (per-token programs; even under the "shared" decode policy, which would read host segments) and the
    static step equals paged_step."""
    if oracles.fam.name != "llama":
        pytest.skip("the kernels are the same for every family")
    pytest.importorskip("triton")
    from kernels import triton_lora, variants

    if not triton_lora.INTERPRETED:
        pytest.skip("needs TRITON_INTERPRET=1 on CPU")
    engine = prefilled(oracles.multi, ROWS)
    monkeypatch.setenv("SWAPYARD_KERNELS", "triton")
    monkeypatch.setattr(variants, "_policy", "shared")
    static: list[bool] = []
    real = fused.lora_shrink_slices
    monkeypatch.setattr(
        fused,
        "lora_shrink_slices",
        lambda x, p, meta, **kw: (static.append(meta.static), real(x, p, meta, **kw))[1],
    )
    compare_steps(engine, DecodeGraphRunner(oracles.multi, max_batch=8, use_graphs=False), steps=2)
    assert set(static) == {True, False}  # the static step's groups fused, and the eager step's
    assert all(g.enabled for g in oracles.multi._sibling_groups)


@torch.no_grad()
def test_tiled_static_attention_equals_paged_step(oracles: Oracles, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past KEY_TILE keys the static attention runs tile by tile; with tiles of one block every step does."""
    monkeypatch.setattr(attention, "KEY_TILE", 4)
    engine = prefilled(oracles.multi, ROWS, seed=5)
    compare_steps(engine, DecodeGraphRunner(oracles.multi, max_batch=8, use_graphs=False), steps=3)


@torch.no_grad()
def test_rows_that_cannot_be_static_are_named(oracles: Oracles) -> None:
    engine = prefilled(oracles.multi, ["LoRA", "prefix tuning"])
    runner = DecodeGraphRunner(oracles.multi, max_batch=4, use_graphs=False)
    plan = decode_plan(engine)
    reason = runner.why_not(plan)
    assert reason is not None and "prefix tuning" in reason and "seq 1" in reason, reason
    with pytest.raises(ValueError, match="prefix"):
        runner.step(plan)
    lora_only = StepPlan([plan.chunks[0]])
    assert runner.why_not(lora_only) is None
    prefill = StepPlan([SeqChunk(9, None, [5, 6], 0, [plan.chunks[0].block_table[0]])])
    assert "prefill" in (runner.why_not(prefill) or "")
    too_many = DecodeGraphRunner(oracles.multi, max_batch=1, use_graphs=False)
    assert "largest bucket" in (too_many.why_not(plan) or "")
    model = oracles.multi
    slot = model._get("LoRA").slot
    assert slot_reason(model, slot) is None
    layer = next(m for m in model._layers.values() if isinstance(m, MultiLinear))
    layer.bias_delta[slot] = torch.zeros(layer.out_features)  # as a LoRA with lora_bias would have
    try:
        assert "trained bias" in (slot_reason(model, slot) or "")
    finally:
        del layer.bias_delta[slot]


class NoHostSync(TorchDispatchMode):
    """Fails on every op that reads a tensor's value back to the host or sizes its output by the data."""

    SYNCS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "equal", "is_nonzero")

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        if name in self.SYNCS:
            raise AssertionError(f"host sync inside the static step: aten.{name}")
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def test_static_step_reads_nothing_back_to_the_host(oracles: Oracles) -> None:
    """The step itself (after its inputs are in the buffers) runs no op whose result the host reads: no
    `.item()`/`bool()`/`.tolist()`, no data-sized outputs. That is what makes it capturable in a CUDA graph."""
    engine = prefilled(oracles.multi, ROWS)
    runner = DecodeGraphRunner(oracles.multi, max_batch=8, use_graphs=False)
    plan = decode_plan(engine)
    want = runner.step(plan)  # fills the buffers for (8, width) and primes the runner's state
    width = runner.widths[0]
    while width * 4 < max(c.start + 1 for c in plan.chunks):
        width = runner.widths[runner.widths.index(width) + 1]
    restore_to = snapshot_pool(engine.model)
    inputs = runner._buffers.views(8, width)  # type: ignore[union-attr]
    mp = pytest.MonkeyPatch()
    mp.setattr(torch.Tensor, "tolist", lambda self: (_ for _ in ()).throw(AssertionError("Tensor.tolist")))
    try:
        with NoHostSync():
            got = runner._eager(inputs)
    finally:
        mp.undo()
    restore_pool(engine.model, restore_to)
    torch.testing.assert_close(got[: len(plan.chunks)], want, atol=0, rtol=0)


def test_buckets() -> None:
    assert batch_buckets(40) == [1, 2, 4, 8, 16, 24, 32, 40]
    assert batch_buckets(6) == [1, 2, 4, 6]
    assert batch_buckets(1) == [1]
    assert width_buckets(12) == [1, 2, 4, 8, 12]
    assert width_buckets(1) == [1]


@pytest.mark.gpu
@torch.no_grad()
def test_captured_graphs_replay_paged_step_logits(tmp_path_factory: Any) -> None:
    """On CUDA: the first step of a shape captures its graph, later ones replay it; logits equal paged_step's."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    fam, root = FAMILIES["llama"], tmp_path_factory.mktemp("gpu")
    Oracles(fam, root, ("LoRA", "IA3", "DoRA"))  # saves the perturbed adapters under root/<method>
    model = MultiAdapterModel(fam.build().cuda())
    for method in ("LoRA", "IA3", "DoRA"):
        model.add(method, root / method)
    engine = prefilled(model, ["LoRA", None, "IA3", "DoRA", "LoRA"])
    runner = DecodeGraphRunner(model, max_batch=8)
    assert runner.use_graphs
    compare_steps(engine, runner, steps=5)
    assert 1 <= runner.captures <= 2  # one shape per width bucket reached (4 or 8 blocks)


def test_bases_with_swapped_attention_stay_eager(tmp_path_factory: Any) -> None:
    """Falcon's rotary attention runs through families.py's adapter, which only paged_step installs: the static
    step must turn such a base away (it is not ALiBi, so the ALiBi check alone would let it in)."""
    from adapters_core.paged.static_decode import model_reason

    falcon = Oracles(FAMILIES["falcon"], tmp_path_factory.mktemp("falcon"), ("LoRA",))
    assert not getattr(falcon.multi.model.config, "alibi", False)
    reason = model_reason(falcon.multi)
    assert reason is not None and "families.py" in reason
    llama = Oracles(FAMILIES["llama"], tmp_path_factory.mktemp("llama"), ("LoRA",))
    assert model_reason(llama.multi) is None
    t5 = Oracles(FAMILIES["t5"], tmp_path_factory.mktemp("t5"), ("LoRA",))
    assert "encoder-decoder" in (model_reason(t5.multi) or "")
