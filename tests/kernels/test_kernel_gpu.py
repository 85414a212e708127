"""The Triton kernels compiled for a CUDA device against the reference on the same device.

Run by `bench/gpu_check.py` (`make gpu-check`) with TRITON_INTERPRET=0; skipped without CUDA and under the
interpreter (which the CPU suite uses). Shapes are serving-sized: hidden 4096, up to 256 rows.
"""

from __future__ import annotations

from typing import Any

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


# -- serving: batch invariance and no compile after warm-up (issue 18) -----------------------------------


def _row_alone_and_in_batches(meta_of: Any, dtype: torch.dtype, hidden: int = 4096) -> None:
    """A target row's output, alone and at a random place among 1..255 random rows, must be bit-identical."""
    gen = torch.Generator().manual_seed(11)
    case = serving_case(1, 16, seed=7, hidden=hidden)
    pool = make_pool(case, make_adapters(case), dtype, CUDA)
    x0 = torch.randn(1, hidden, generator=gen).to(CUDA, dtype)
    y0 = torch.randn(1, hidden, generator=gen).to(CUDA, dtype)
    alone = None
    for n in (1, 2, 3, 7, 64, 128, 256):
        at = int(torch.randint(0, n, (1,), generator=gen))
        slots = torch.randint(-1, 16, (n,), generator=gen).tolist()
        slots[at] = 5
        meta = meta_of(slots, at).to(CUDA)
        x = torch.randn(meta.num_tokens, hidden, generator=gen).to(CUDA, dtype)
        y = torch.randn(meta.num_tokens, hidden, generator=gen).to(CUDA, dtype)
        row = _target_token(meta, slots, at)
        x[row], y[row] = x0[0], y0[0]
        out = lora_apply(y.clone(), x, pool, meta, backend="triton")[row]
        assert not torch.equal(out, y0[0])
        alone = out if alone is None else alone
        assert torch.equal(out, alone), f"the row differs in a batch of {n} rows"


def _target_token(meta: Any, slots: list[int], at: int) -> int:
    return at if meta.decode else at + (meta.num_tokens - len(slots))  # a chunk of prompt tokens comes first


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_decode_row_is_batch_invariant(dtype: torch.dtype) -> None:
    _row_alone_and_in_batches(lambda slots, at: build_decode_meta(slots), dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16], ids=["bf16"])
def test_decode_token_in_a_mixed_paged_step_is_batch_invariant(dtype: torch.dtype) -> None:
    """A paged step packs a prompt chunk (slot 3, 40 tokens) before the decode tokens: segment kernels, whose
    BLOCK_M follows the longest segment. The decode token must still not see its batch-mates."""
    _row_alone_and_in_batches(
        lambda slots, at: build_prefill_meta([3, *slots], [40] + [1] * len(slots)), dtype
    )


def _compiled(kernel: Any) -> int:
    """How many binaries a Triton kernel holds (Triton 3.x: device_caches[device][0] is the kernel cache)."""
    return sum(len(cache[0]) for cache in kernel.device_caches.values())


def test_no_compile_after_warmup() -> None:
    from kernels import triton_ia3 as ti
    from kernels.variants import LoraGeometry
    from kernels.warmup import warmup

    kernels_ = [
        tk._sgmv_shrink_kernel,
        tk._sgmv_expand_kernel,
        tk._bgmv_shrink_kernel,
        tk._bgmv_expand_kernel,
        ti._ia3_scale_kernel,
    ]
    dtype, rank_capacity = torch.bfloat16, 64
    shapes = [(4096, 4096), (4096, 1024)]
    warmup(
        [LoraGeometry(i, o, rank_capacity, dtype, dtype) for i, o in shapes],
        max_batch_tokens=512,
        device=CUDA,
    )
    before = [_compiled(k) for k in kernels_]
    gen = torch.Generator().manual_seed(0)
    for h_in, h_out in shapes:
        case = Case("warm", h_in, h_out, (8, 16, 64, 32), (0,), (1,))
        pool = make_pool(case, make_adapters(case), dtype, CUDA)  # rank capacity 64, as warmed up
        ia3_pool = make_ia3_pool(ia3_vectors(4, h_out), torch.float32, CUDA)
        for n in (1, 2, 5, 17, 64, 100, 256):
            slots = torch.randint(-1, 4, (n,), generator=gen).tolist()
            lengths = torch.randint(1, 512 // n + 1, (n,), generator=gen).tolist()
            for meta in (build_decode_meta(slots), build_prefill_meta(slots, lengths)):
                meta = meta.to(CUDA)
                x = torch.randn(meta.num_tokens, h_in, device=CUDA, dtype=dtype)
                y = torch.randn(meta.num_tokens, h_out, device=CUDA, dtype=dtype)
                lora_apply(y, x, pool, meta, backend="triton")
                ia3_scale_output(y, ia3_pool, meta, backend="triton")
    torch.cuda.synchronize()
    assert [_compiled(k) for k in kernels_] == before
