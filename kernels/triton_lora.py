"""Triton LoRA kernels: segment (SGMV) and per-token (BGMV) shrink and expand over a paged `LoraPool`.

Every kernel reads the pool's arenas in place through `page_table` (one page per rank unit, see
`kernels.pool`), walks rank blocks only up to the slot's own rank (a slot of rank 8 costs one masked block
of 16, never `max_rank`), and does all index arithmetic in int64. Numerics follow `kernels.reference`
operation for operation: products in the weights' dtype with float32 accumulation, `u` float32, rounded to
the weights' dtype before expand; float32 weights use IEEE dots (no TF32). Under TRITON_INTERPRET=1
(Triton 3.9) bfloat16 needs two allowances: its `tl.dot` is done on float32 copies (`_upcast_dot`), and
its float32 -> bfloat16 casts truncate instead of rounding to nearest, so CPU tests allow an ulp there.

Each kernel runs one program of `kernels.triton_lora_programs` (the multi-slice kernels of
`kernels.triton_fused` run the same ones). Launch shapes (host-side, from `BatchMeta`'s host fields; no
device sync):
- SGMV: a program per (segment tile of BLOCK_M tokens, rank block | output block); tiles past a segment's
  end exit at once.
- BGMV: a program per (token, rank block | output block); tokens without an adapter exit at once. It reads
  `token_slots` alone, so static decode metadata (a captured CUDA graph's) runs it with fixed shapes.
  Decode metadata always runs BGMV unless the decode policy is "shared" (`kernels.variants`).

Batch invariance: there is no split-K. Every program reduces over all of H_in (shrink) or the slot's rank
(expand) itself, in an order fixed by the layer's geometry, and stores its result: no atomics, so a decode
row's output is bit-identical alone or among any batch-mates, and `u` needs no zeroing (the kernels write
every entry expand reads). Variants (the constexprs) come from `kernels.variants.variant_key`, a small fixed
set that `kernels.warmup` compiles at start-up; the integer arguments that vary with the batch or the loaded
ranks (`m_blocks`, `r_blocks`) are not specialised on, so no batch compiles mid-serving.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.metadata import BatchMeta
from kernels.pool import LoraWeights
from kernels.triton_lora_programs import (
    bgmv_expand_program,
    bgmv_shrink_program,
    sgmv_expand_program,
    sgmv_shrink_program,
)
from kernels.variants import BLOCK_R, Variant, cdiv, variant_key

try:  # decided once, at import, exactly as `triton.jit` decides it
    from triton import knobs

    INTERPRETED = bool(knobs.runtime.interpret)
except ImportError:  # Triton < 3.3
    INTERPRETED = os.environ.get("TRITON_INTERPRET", "").lower() in {"1", "true", "on", "yes"}


@triton.jit(do_not_specialize=["m_blocks", "r_blocks"])  # they vary with the batch / loaded ranks
def _sgmv_shrink_kernel(
    x_ptr, a_ptr, u_ptr, page_table_ptr, ranks_ptr,
    token_order_ptr, seg_starts_ptr, seg_lens_ptr, seg_slots_ptr,
    in_features, m_blocks, r_blocks,
    stride_xt, stride_xk, stride_ap, stride_pts, stride_ut, stride_ur,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    sgmv_shrink_program(
        tl.program_id(0), x_ptr, a_ptr, u_ptr, page_table_ptr, ranks_ptr,
        token_order_ptr, seg_starts_ptr, seg_lens_ptr, seg_slots_ptr,
        in_features, m_blocks, r_blocks,
        stride_xt, stride_xk, stride_ap, stride_pts, stride_ut, stride_ur,
        BLOCK_M, BLOCK_R, BLOCK_K, DOT_PRECISION, UPCAST_DOT,
    )  # fmt: skip


@triton.jit(do_not_specialize=["m_blocks"])
def _sgmv_expand_kernel(
    u_ptr, bt_ptr, y_ptr, page_table_ptr, ranks_ptr, scales_ptr,
    token_order_ptr, seg_starts_ptr, seg_lens_ptr, seg_slots_ptr,
    out_features, m_blocks, n_blocks,
    stride_ut, stride_ur, stride_bp, stride_pts, stride_yt, stride_yn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    sgmv_expand_program(
        tl.program_id(0), u_ptr, bt_ptr, y_ptr, page_table_ptr, ranks_ptr, scales_ptr,
        token_order_ptr, seg_starts_ptr, seg_lens_ptr, seg_slots_ptr,
        out_features, m_blocks, n_blocks,
        stride_ut, stride_ur, stride_bp, stride_pts, stride_yt, stride_yn,
        BLOCK_M, BLOCK_N, BLOCK_R, DOT_PRECISION, UPCAST_DOT,
    )  # fmt: skip


@triton.jit(do_not_specialize=["r_blocks"])
def _bgmv_shrink_kernel(
    x_ptr, a_ptr, u_ptr, page_table_ptr, ranks_ptr, token_slots_ptr,
    in_features, r_blocks,
    stride_xt, stride_xk, stride_ap, stride_pts, stride_ut, stride_ur,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    bgmv_shrink_program(
        tl.program_id(0), x_ptr, a_ptr, u_ptr, page_table_ptr, ranks_ptr, token_slots_ptr,
        in_features, r_blocks,
        stride_xt, stride_xk, stride_ap, stride_pts, stride_ut, stride_ur,
        BLOCK_R, BLOCK_K,
    )  # fmt: skip


@triton.jit
def _bgmv_expand_kernel(
    u_ptr, bt_ptr, y_ptr, page_table_ptr, ranks_ptr, scales_ptr, token_slots_ptr,
    out_features, n_blocks,
    stride_ut, stride_ur, stride_bp, stride_pts, stride_yt, stride_yn,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    bgmv_expand_program(
        tl.program_id(0), u_ptr, bt_ptr, y_ptr, page_table_ptr, ranks_ptr, scales_ptr, token_slots_ptr,
        out_features, n_blocks,
        stride_ut, stride_ur, stride_bp, stride_pts, stride_yt, stride_yn,
        BLOCK_N, BLOCK_R,
    )  # fmt: skip


# -- launchers ------------------------------------------------------------------------------------------


def lora_variant(
    stage: str,
    w: LoraWeights,
    act_dtype: torch.dtype,
    meta: BatchMeta,
    decode: bool,
    *,
    block_r: int = BLOCK_R,
    sliced: bool = False,
) -> Variant:
    """The variant a launch of `stage` uses: `kernels.variants.variant_key` on this pool and batch."""
    features = w.in_features if stage == "shrink" else w.out_features
    return variant_key(
        "shrink" if stage == "shrink" else "expand",
        features,
        w.dtype,
        act_dtype,
        decode=decode,
        max_seg_len=meta.max_seg_len,
        block_r=block_r,
        sliced=sliced,
    )


def _dot_precision(w: LoraWeights) -> str:
    return "ieee" if w.dtype == torch.float32 else "tf32"  # "tf32" only matters for float32 operands


def _upcast_dot(w: LoraWeights) -> bool:
    """Dot bfloat16 tiles as float32 under the interpreter, whose `tl.dot` multiplies bfloat16's raw uint16
    bits (Triton 3.9). The same math: products of bfloat16 values are exact in float32."""
    return INTERPRETED and w.dtype == torch.bfloat16


def sgmv_shrink(x: Tensor, w: LoraWeights, meta: BatchMeta, out: Tensor, *, block_r: int = BLOCK_R) -> Tensor:
    """Segment shrink: out[t, :r] = x[t] @ A[slot].T. x: (T, H_in); out: (T, R) float32. `block_r`: the rank
    block (wider blocks read x once for more of the rank: kernels/triton_shared_decode.py).

    Writes exactly the entries expand reads (tokens with a slot, j < r[slot]); leaves the rest as they are.
    """
    if meta.num_segments == 0 or w.max_rank == 0:
        return out
    v = lora_variant("shrink", w, x.dtype, meta, decode=False, block_r=block_r)
    m_blocks = cdiv(meta.max_seg_len, v.block_m)
    r_blocks = cdiv(w.max_rank, block_r)
    grid = (meta.num_segments * m_blocks * r_blocks,)
    _sgmv_shrink_kernel[grid](
        x, w.a_pages, out, w.page_table, w.ranks,
        meta.token_order, meta.seg_starts, meta.seg_lens, meta.seg_slots,
        w.in_features, m_blocks, r_blocks,
        x.stride(0), x.stride(1), w.a_pages.stride(0), w.page_table.stride(0), out.stride(0), out.stride(1),
        BLOCK_M=v.block_m, BLOCK_R=block_r, BLOCK_K=v.block_f, DOT_PRECISION=_dot_precision(w),
        UPCAST_DOT=_upcast_dot(w),
    )  # fmt: skip
    return out


def sgmv_expand(y: Tensor, u: Tensor, w: LoraWeights, meta: BatchMeta, *, block_r: int = BLOCK_R) -> Tensor:
    """Segment expand: y[t] += scale[slot] * u[t, :r] @ B[slot].T in place. y: (T, H_out); u: (T, R)."""
    if meta.num_segments == 0 or w.max_rank == 0:
        return y
    v = lora_variant("expand", w, y.dtype, meta, decode=False, block_r=block_r)
    m_blocks = cdiv(meta.max_seg_len, v.block_m)
    n_blocks = cdiv(w.out_features, v.block_f)
    grid = (meta.num_segments * m_blocks * n_blocks,)
    _sgmv_expand_kernel[grid](
        u, w.bt_pages, y, w.page_table, w.ranks, w.scales,
        meta.token_order, meta.seg_starts, meta.seg_lens, meta.seg_slots,
        w.out_features, m_blocks, n_blocks,
        u.stride(0), u.stride(1), w.bt_pages.stride(0), w.page_table.stride(0), y.stride(0), y.stride(1),
        BLOCK_M=v.block_m, BLOCK_N=v.block_f, BLOCK_R=block_r, DOT_PRECISION=_dot_precision(w),
        UPCAST_DOT=_upcast_dot(w),
    )  # fmt: skip
    return y


def bgmv_shrink(x: Tensor, w: LoraWeights, meta: BatchMeta, out: Tensor) -> Tensor:
    """Per-token shrink, same math as `sgmv_shrink`; reads `meta.token_slots` (any order, no sort)."""
    if meta.num_segments == 0 or w.max_rank == 0:
        return out
    v = lora_variant("shrink", w, x.dtype, meta, decode=True)
    r_blocks = cdiv(w.max_rank, BLOCK_R)
    grid = (meta.num_tokens * r_blocks,)
    _bgmv_shrink_kernel[grid](
        x, w.a_pages, out, w.page_table, w.ranks, meta.token_slots,
        w.in_features, r_blocks,
        x.stride(0), x.stride(1), w.a_pages.stride(0), w.page_table.stride(0), out.stride(0), out.stride(1),
        BLOCK_R=BLOCK_R, BLOCK_K=v.block_f,
    )  # fmt: skip
    return out


def bgmv_expand(y: Tensor, u: Tensor, w: LoraWeights, meta: BatchMeta) -> Tensor:
    """Per-token expand, same math as `sgmv_expand`; reads `meta.token_slots`."""
    if meta.num_segments == 0 or w.max_rank == 0:
        return y
    v = lora_variant("expand", w, y.dtype, meta, decode=True)
    n_blocks = cdiv(w.out_features, v.block_f)
    grid = (meta.num_tokens * n_blocks,)
    _bgmv_expand_kernel[grid](
        u, w.bt_pages, y, w.page_table, w.ranks, w.scales, meta.token_slots,
        w.out_features, n_blocks,
        u.stride(0), u.stride(1), w.bt_pages.stride(0), w.page_table.stride(0), y.stride(0), y.stride(1),
        BLOCK_N=v.block_f, BLOCK_R=BLOCK_R,
    )  # fmt: skip
    return y


def lora_shrink(x: Tensor, w: LoraWeights, meta: BatchMeta, out: Tensor) -> Tensor:
    """Decode metadata: `triton_shared_decode.decode_shrink` (BGMV, or the shared-adapter kernels under the
    "shared" decode policy); `sgmv_shrink` otherwise."""
    if not meta.decode:
        return sgmv_shrink(x, w, meta, out)
    from kernels.triton_shared_decode import decode_shrink

    return decode_shrink(x, w, meta, out)


def lora_expand(y: Tensor, u: Tensor, w: LoraWeights, meta: BatchMeta) -> Tensor:
    """Decode metadata: `triton_shared_decode.decode_expand` (as `lora_shrink`); `sgmv_expand` otherwise."""
    if not meta.decode:
        return sgmv_expand(y, u, w, meta)
    from kernels.triton_shared_decode import decode_expand

    return decode_expand(y, u, w, meta)
