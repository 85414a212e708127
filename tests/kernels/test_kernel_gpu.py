"""The Triton kernels compiled for a CUDA device against the reference on the same device.

Run by `bench/gpu_check.py` (`make gpu-check`) with TRITON_INTERPRET=0; skipped without CUDA and under the
interpreter (which the CPU suite uses). Shapes are serving-sized: hidden 4096, up to 256 rows.
"""

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
)

from kernels import (
    build_decode_meta,
    build_prefill_meta,
    ia3_scale_input,
    ia3_scale_output,
    lora_apply,
    lora_shrink,
)
from kernels import triton_lora as tk

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(
        tk.INTERPRETED, reason="compiled kernels only: run bench/gpu_check.py (TRITON_INTERPRET=0)"
    ),
]
CUDA = "cuda"


@pytest.fixture(autouse=True)
def _no_tf32() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 reference must be IEEE too


def serving_case(rows: int, adapters: int, seed: int, hidden: int = 4096) -> Case:
    gen = torch.Generator().manual_seed(seed)
    ranks = tuple(
        int(r) for r in torch.tensor([8, 16, 32, 64])[torch.randint(0, 4, (adapters,), generator=gen)]
    )
    weights = 1.0 / torch.arange(1, adapters + 1, dtype=torch.float64)  # Zipf-skewed slots
    slots = torch.multinomial(weights, rows, replacement=True, generator=gen).tolist()
    slots = [-1 if i % 7 == 3 else s for i, s in enumerate(slots)]
    lengths = torch.randint(1, 200, (rows,), generator=gen).tolist()
    return Case(f"serving_{rows}x{adapters}", hidden, hidden, ranks, tuple(slots), tuple(lengths))


def compare(case: Case, dtype: torch.dtype, decode: bool) -> None:
    pool = make_pool(case, make_adapters(case), dtype, CUDA)
    meta = case.meta(decode).to(CUDA)
    x, y = make_inputs(case, meta, dtype)
    assert_close(
        lora_shrink(x, pool, meta, backend="triton"),
        lora_shrink(x, pool, meta, backend="torch"),
        torch.float32,
    )
    y_tri = lora_apply(y.clone(), x, pool, meta, backend="triton")
    y_ref = lora_apply(y.clone(), x, pool, meta, backend="torch")
    assert_close(y_tri, y_ref, dtype)
    untouched = meta.token_slots == -1
    assert torch.equal(y_tri[untouched], y[untouched])


@pytest.mark.parametrize("decode", [False, True], ids=["sgmv", "bgmv"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_adversarial_cases_float32(case: Case, decode: bool) -> None:
    compare(case, torch.float32, decode)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("rows,adapters", [(1, 1), (64, 16), (256, 64)])
def test_decode_serving_shapes(rows: int, adapters: int, dtype: torch.dtype) -> None:
    compare(serving_case(rows, adapters, seed=rows), dtype, decode=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_prefill_serving_shapes(dtype: torch.dtype) -> None:
    compare(serving_case(12, 6, seed=5), dtype, decode=False)


@pytest.mark.parametrize("decode", [False, True], ids=["prefill", "decode"])
def test_ia3_on_cuda_is_bit_exact(decode: bool) -> None:
    vectors = ia3_vectors(5, 4096)
    pool = make_ia3_pool(vectors, torch.bfloat16, CUDA)
    slots, lengths = [4, -1, 1, 0, 4, 2], [20, 3, 1, 40, 1, 2]
    meta = (build_decode_meta(slots) if decode else build_prefill_meta(slots, lengths)).to(CUDA)
    t = torch.randn(meta.num_tokens, 4096, device=CUDA, dtype=torch.bfloat16)
    assert torch.equal(
        ia3_scale_input(t, pool, meta, backend="triton"), ia3_scale_input(t, pool, meta, backend="torch")
    )
    y_tri = ia3_scale_output(t.clone(), pool, meta, backend="triton")
    assert torch.equal(y_tri, ia3_scale_output(t.clone(), pool, meta, backend="torch"))
