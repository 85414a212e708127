"""Static decode metadata (`build_static_decode_meta`, what a captured CUDA graph replays): `lora_apply` and the
IA3 ops read the token slots from the buffer at every call, on the torch backend (`kernels.static_bgmv`, fixed
shapes) and the Triton BGMV kernels (TRITON_INTERPRET=1), and equal the naive per-token loop; a buffer refilled
with other slots gives the other answer; the segment ops refuse the metadata instead of misreading it. A sibling
group's multi-slice shrink (adapters_core/multi/fused.py) runs its per-token programs on it, whatever the decode
policy (the shared-adapter kernels would read host segments)."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import (
    CASES,
    Case,
    assert_close,
    ia3_vectors,
    make_adapters,
    make_ia3_pool,
    make_inputs,
    make_pool,
    naive_ia3,
    naive_lora,
)

from kernels import (
    ShapeError,
    build_decode_meta,
    ia3_scale_input,
    ia3_scale_output,
    lora_apply,
    lora_expand,
    lora_shrink,
    variants,
)
from kernels import triton_lora as tk
from kernels.metadata import build_static_decode_meta
from kernels.slices import lora_expand_slices, lora_shrink_slices

BACKENDS = [
    "torch",
    pytest.param(
        "triton",
        marks=pytest.mark.skipif(not tk.INTERPRETED, reason="CPU Triton tests need TRITON_INTERPRET=1"),
    ),
]
DECODE_CASES = [c for c in CASES if c.row_slots]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: c.name)
def test_lora_apply_reads_the_static_slots(case: Case, dtype: torch.dtype, backend: str) -> None:
    adapters = make_adapters(case)
    pool = make_pool(case, adapters, dtype)
    buffer = torch.full((len(case.row_slots),), -1, dtype=torch.long)
    meta = build_static_decode_meta(buffer)  # built while the buffer holds no slot at all
    x, y = make_inputs(case, build_decode_meta(list(case.row_slots)), dtype)
    for slots in (list(case.row_slots), list(reversed(case.row_slots))):
        buffer.copy_(torch.tensor(slots))  # what a graph replay sees: new contents, same buffer
        got = lora_apply(y.clone(), x, pool, meta, backend=backend)
        assert_close(got, naive_lora(y, x, adapters, buffer, dtype), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ia3_reads_the_static_slots(backend: str) -> None:
    vectors = ia3_vectors(4, 24)
    pool = make_ia3_pool(vectors, torch.float32)
    buffer = torch.tensor([3, -1, 1, 0, 2, 0])
    meta = build_static_decode_meta(buffer)
    t = torch.randn(6, 24, generator=torch.Generator().manual_seed(0))
    for slots in ([3, -1, 1, 0, 2, 0], [0, 0, -1, 2, 3, 1]):
        buffer.copy_(torch.tensor(slots))
        want = naive_ia3(t, vectors, buffer, torch.float32)
        assert_close(ia3_scale_input(t, pool, meta, backend=backend), want, torch.float32)
        assert_close(ia3_scale_output(t.clone(), pool, meta, backend=backend), want, torch.float32)


def test_segment_ops_refuse_static_metadata() -> None:
    case = CASES[3]
    pool = make_pool(case, make_adapters(case), torch.float32)
    meta = build_static_decode_meta(torch.tensor(list(case.row_slots)))
    x, _ = make_inputs(case, meta, torch.float32)
    with pytest.raises(ShapeError, match="static decode metadata"):
        lora_shrink(x, pool, meta, backend="torch")
    with pytest.raises(ShapeError, match="1-D int64"):
        build_static_decode_meta(torch.tensor([[0]]))


@pytest.mark.skipif(not tk.INTERPRETED, reason="CPU Triton tests need TRITON_INTERPRET=1")
@pytest.mark.parametrize("policy", ["bgmv", "shared"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_group_reads_the_static_slots(
    dtype: torch.dtype, policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(variants, "_policy", policy)
    case = CASES[2]  # zipf: 24 rows over 8 slots, so a dynamic batch of these rows would take shared decode
    assert variants.takes_shared(build_decode_meta(list(case.row_slots))) == (policy == "shared")
    group = [make_adapters(case, seed) for seed in (0, 1)]
    pools = [make_pool(case, adapters, dtype) for adapters in group]
    buffer = torch.full((len(case.row_slots),), -1, dtype=torch.long)
    meta = build_static_decode_meta(buffer)
    assert not variants.takes_shared(meta)
    x, y = make_inputs(case, build_decode_meta(list(case.row_slots)), dtype)
    for slots in (list(case.row_slots), list(reversed(case.row_slots))):
        buffer.copy_(torch.tensor(slots))
        u = lora_shrink_slices(x, pools, meta, backend="triton")  # (2, T, R)
        sliced = [y.clone(), y.clone()]
        lora_expand_slices(sliced, u, pools, meta, backend="triton")
        for s, (pool, adapters) in enumerate(zip(pools, group)):
            want = naive_lora(y, x, adapters, buffer, dtype)
            assert_close(
                lora_expand(y.clone(), u[s], pool, meta, backend="triton"), want, dtype
            )  # as fused.py
            assert_close(sliced[s], want, dtype)
    with pytest.raises(ShapeError, match="static decode metadata"):
        lora_shrink_slices(x, pools, meta, backend="torch")
