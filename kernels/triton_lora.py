"""Triton LoRA kernels: segment (SGMV) and per-token (BGMV) shrink and expand over a paged `LoraPool`.

Every kernel reads the pool's arenas in place through `page_table` (one page per rank unit, see
`kernels.pool`), walks rank blocks only up to the slot's own rank (a slot of rank 8 costs one masked block
of 16, never `max_rank`), and does all index arithmetic in int64. Numerics follow `kernels.reference`
operation for operation: products in the weights' dtype with float32 accumulation, `u` float32, rounded to
the weights' dtype before expand; float32 weights use IEEE dots (no TF32). Under TRITON_INTERPRET=1
(Triton 3.9) bfloat16 needs two allowances: its `tl.dot` is done on float32 copies (`_upcast_dot`), and
its float32 -> bfloat16 casts truncate instead of rounding to nearest, so CPU tests allow an ulp there.

The multi-slice kernels of `kernels.triton_fused` call these kernels as functions (after picking their
slice's pointers), so there is one body per program. Launch shapes (host-side, from `BatchMeta`'s host fields;
no device sync):
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
    pid = tl.program_id(0)
    seg = pid // (m_blocks * r_blocks)
    m0 = (pid // r_blocks) % m_blocks * BLOCK_M
    r0 = pid % r_blocks * BLOCK_R
    seg_len = tl.load(seg_lens_ptr + seg)
    if m0 >= seg_len:
        return
    slot = tl.load(seg_slots_ptr + seg)
    rank = tl.load(ranks_ptr + slot)
    if r0 >= rank:
        return
    seg_start = tl.load(seg_starts_ptr + seg)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    mask_m = offs_m < seg_len
    tok = tl.load(token_order_ptr + seg_start + offs_m, mask=mask_m, other=0)  # (BM,) int64
    offs_r = r0 + tl.arange(0, BLOCK_R)
    mask_r = offs_r < rank
    page = tl.load(page_table_ptr + slot * stride_pts + offs_r, mask=mask_r, other=0)  # (BR,) int64

    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, in_features, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < in_features
        x = tl.load(
            x_ptr + tok[:, None] * stride_xt + offs_k[None, :] * stride_xk,
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        )  # (BM, BK)
        a = tl.load(
            a_ptr + page[None, :] * stride_ap + offs_k[:, None],
            mask=mask_r[None, :] & mask_k[:, None],
            other=0.0,
        )  # (BK, BR) = A[slot].T tile
        x = x.to(a_ptr.dtype.element_ty)  # operands in the weights' dtype
        if UPCAST_DOT:
            acc += tl.dot(x.to(tl.float32), a.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(x, a, input_precision=DOT_PRECISION)
    u_ptrs = u_ptr + tok[:, None] * stride_ut + offs_r[None, :] * stride_ur
    tl.store(u_ptrs, acc, mask=mask_m[:, None] & mask_r[None, :])


@triton.jit(do_not_specialize=["m_blocks"])
def _sgmv_expand_kernel(
    u_ptr, bt_ptr, y_ptr, page_table_ptr, ranks_ptr, scales_ptr,
    token_order_ptr, seg_starts_ptr, seg_lens_ptr, seg_slots_ptr,
    out_features, m_blocks, n_blocks,
    stride_ut, stride_ur, stride_bp, stride_pts, stride_yt, stride_yn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    seg = pid // (m_blocks * n_blocks)
    m0 = (pid // n_blocks) % m_blocks * BLOCK_M
    n0 = pid % n_blocks * BLOCK_N
    seg_len = tl.load(seg_lens_ptr + seg)
    if m0 >= seg_len:
        return
    slot = tl.load(seg_slots_ptr + seg)
    rank = tl.load(ranks_ptr + slot)
    if rank == 0:
        return
    scale = tl.load(scales_ptr + slot)
    seg_start = tl.load(seg_starts_ptr + seg)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    mask_m = offs_m < seg_len
    tok = tl.load(token_order_ptr + seg_start + offs_m, mask=mask_m, other=0)  # (BM,) int64
    offs_n = n0 + tl.arange(0, BLOCK_N)
    mask_n = offs_n < out_features

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, rank, BLOCK_R):  # this slot's rank only
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < rank
        page = tl.load(page_table_ptr + slot * stride_pts + offs_r, mask=mask_r, other=0)  # (BR,) int64
        u = tl.load(
            u_ptr + tok[:, None] * stride_ut + offs_r[None, :] * stride_ur,
            mask=mask_m[:, None] & mask_r[None, :],
            other=0.0,
        )  # (BM, BR) float32
        bt = tl.load(
            bt_ptr + page[:, None] * stride_bp + offs_n[None, :],
            mask=mask_r[:, None] & mask_n[None, :],
            other=0.0,
        )  # (BR, BN) = B[slot].T tile
        u = u.to(bt_ptr.dtype.element_ty)  # u rounded to the weights' dtype
        if UPCAST_DOT:
            acc += tl.dot(u.to(tl.float32), bt.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(u, bt, input_precision=DOT_PRECISION)
    y_ptrs = y_ptr + tok[:, None] * stride_yt + offs_n[None, :] * stride_yn
    mask = mask_m[:, None] & mask_n[None, :]
    y = tl.load(y_ptrs, mask=mask, other=0.0)
    tl.store(y_ptrs, (y.to(tl.float32) + acc * scale).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["r_blocks"])
def _bgmv_shrink_kernel(
    x_ptr, a_ptr, u_ptr, page_table_ptr, ranks_ptr, token_slots_ptr,
    in_features, r_blocks,
    stride_xt, stride_xk, stride_ap, stride_pts, stride_ut, stride_ur,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    tok = (pid // r_blocks).to(tl.int64)
    r0 = pid % r_blocks * BLOCK_R
    slot = tl.load(token_slots_ptr + tok)
    if slot < 0:
        return
    rank = tl.load(ranks_ptr + slot)
    if r0 >= rank:
        return
    offs_r = r0 + tl.arange(0, BLOCK_R)
    mask_r = offs_r < rank
    page = tl.load(page_table_ptr + slot * stride_pts + offs_r, mask=mask_r, other=0)  # (BR,) int64

    acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k0 in range(0, in_features, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < in_features
        x = tl.load(x_ptr + tok * stride_xt + offs_k * stride_xk, mask=mask_k, other=0.0)  # (BK,)
        x = x.to(a_ptr.dtype.element_ty).to(tl.float32)
        a = tl.load(
            a_ptr + page[:, None] * stride_ap + offs_k[None, :],
            mask=mask_r[:, None] & mask_k[None, :],
            other=0.0,
        )  # (BR, BK)
        acc += tl.sum(a.to(tl.float32) * x[None, :], axis=1)
    tl.store(u_ptr + tok * stride_ut + offs_r * stride_ur, acc, mask=mask_r)


@triton.jit
def _bgmv_expand_kernel(
    u_ptr, bt_ptr, y_ptr, page_table_ptr, ranks_ptr, scales_ptr, token_slots_ptr,
    out_features, n_blocks,
    stride_ut, stride_ur, stride_bp, stride_pts, stride_yt, stride_yn,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    tok = (pid // n_blocks).to(tl.int64)
    n0 = pid % n_blocks * BLOCK_N
    slot = tl.load(token_slots_ptr + tok)
    if slot < 0:
        return
    rank = tl.load(ranks_ptr + slot)
    if rank == 0:
        return
    scale = tl.load(scales_ptr + slot)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    mask_n = offs_n < out_features

    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for r0 in range(0, rank, BLOCK_R):  # this slot's rank only
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < rank
        page = tl.load(page_table_ptr + slot * stride_pts + offs_r, mask=mask_r, other=0)  # (BR,) int64
        u = tl.load(u_ptr + tok * stride_ut + offs_r * stride_ur, mask=mask_r, other=0.0)  # (BR,) float32
        u = u.to(bt_ptr.dtype.element_ty).to(tl.float32)
        bt = tl.load(
            bt_ptr + page[:, None] * stride_bp + offs_n[None, :],
            mask=mask_r[:, None] & mask_n[None, :],
            other=0.0,
        )  # (BR, BN)
        acc += tl.sum(u[:, None] * bt.to(tl.float32), axis=0)
    y_ptrs = y_ptr + tok * stride_yt + offs_n * stride_yn
    y = tl.load(y_ptrs, mask=mask_n, other=0.0)
    tl.store(y_ptrs, (y.to(tl.float32) + acc * scale).to(y_ptr.dtype.element_ty), mask=mask_n)


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
