"""Static decode metadata (`build_static_decode_meta`, what a captured CUDA graph replays): `lora_apply` and the
IA3 ops read the token slots from the buffer at every call, on the torch backend (`kernels.static_bgmv`, fixed
shapes) and the Triton BGMV kernels (TRITON_INTERPRET=1), and equal the naive per-token loop; a buffer refilled
with other slots gives the other answer; the segment ops refuse the metadata instead of misreading it."""

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

from kernels import ShapeError, build_decode_meta, ia3_scale_input, ia3_scale_output, lora_apply, lora_shrink
from kernels import triton_lora as tk
from kernels.metadata import build_static_decode_meta

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
