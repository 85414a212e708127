"""Multi-slice Triton LoRA kernels: one launch shrinks (or expands) up to `MAX_SLICES` sibling modules.

Sibling modules read the same input `x` (q/k/v of an attention block, gate/up of a gated MLP) and each keeps
its own `LoraPool`. Where `kernels.triton_lora` launches one shrink and one expand per module, these take the
pools of a group at once, as vLLM's multi-slice `lora_shrink` / `lora_expand` do (there over a merged base
output with column offsets; here every slice keeps its own tensors):

- shrink: `u[s, t, :r] = x[t] @ A_s[slot].T` for every slice s, one launch, `u` (n, T, R) float32;
- expand: `y_s[t] += scale_s[slot] * u[s, t, :r] @ B_s[slot].T` for every slice s, one launch.

The slice is the last grid axis; a program picks its slice's pointers (`_pick`) and then runs exactly the
body of the single-module kernel of `kernels.triton_lora` (same blocks, same order of operations), so a
slice's result is bit-identical to the single-module launch. Slices may differ in output width and in each
slot's rank (rank_pattern); they share `in_features`, the rank capacity `R` and the dtype.

As in `kernels.triton_lora`: no split-K and no atomics (a decode row's u is the single-module BGMV's bit for
bit, so batch-invariant), launch variants from `kernels.variants.variant_key` (`sliced=True`; `kernels.warmup`
compiles them for `sliced` geometries), the batch-dependent integers (`m_blocks`, `r_blocks`, the slice
stride `T * R` of u) not specialised on; decode takes the segment tiles only under the "shared" decode policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.metadata import BatchMeta
from kernels.pool import LoraWeights
from kernels.triton_lora import _dot_precision, _upcast_dot
from kernels.variants import BLOCK_R, Variant, cdiv, shared_block_r, takes_shared, variant_key

MAX_SLICES = 3  # q/k/v: the widest group a model has
T = TypeVar("T")


@triton.jit
def _pick(sid, p0, p1, p2):
    """The argument of slice `sid` (0, 1 or 2): pointers of different slices differ, their types do not."""
    p = p0
    if sid == 1:
        p = p1
    if sid == 2:
        p = p2
    return p


@triton.jit(do_not_specialize=["m_blocks", "r_blocks", "stride_us"])  # stride_us = T * R varies
def _sgmv_shrink_slices_kernel(
    x_ptr, a0_ptr, a1_ptr, a2_ptr, pt0_ptr, pt1_ptr, pt2_ptr, rk0_ptr, rk1_ptr, rk2_ptr, u_ptr,
    token_order_ptr, seg_starts_ptr, seg_lens_ptr, seg_slots_ptr,
    in_features, m_blocks, r_blocks,
    stride_xt, stride_xk, stride_ap, stride_pts, stride_us, stride_ut, stride_ur,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    sid = tl.program_id(2)
    a_ptr = _pick(sid, a0_ptr, a1_ptr, a2_ptr)
    page_table_ptr = _pick(sid, pt0_ptr, pt1_ptr, pt2_ptr)
    ranks_ptr = _pick(sid, rk0_ptr, rk1_ptr, rk2_ptr)
    u_ptr += sid.to(tl.int64) * stride_us
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
        )  # (BK, BR) = A_s[slot].T tile
        x = x.to(a_ptr.dtype.element_ty)
        if UPCAST_DOT:
            acc += tl.dot(x.to(tl.float32), a.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(x, a, input_precision=DOT_PRECISION)
    tl.store(
        u_ptr + tok[:, None] * stride_ut + offs_r[None, :] * stride_ur,
        acc,
        mask=mask_m[:, None] & mask_r[None, :],
    )


@triton.jit(do_not_specialize=["r_blocks", "stride_us"])
def _bgmv_shrink_slices_kernel(
    x_ptr, a0_ptr, a1_ptr, a2_ptr, pt0_ptr, pt1_ptr, pt2_ptr, rk0_ptr, rk1_ptr, rk2_ptr, u_ptr,
    token_slots_ptr, in_features, r_blocks,
    stride_xt, stride_xk, stride_ap, stride_pts, stride_us, stride_ut, stride_ur,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    sid = tl.program_id(2)
    a_ptr = _pick(sid, a0_ptr, a1_ptr, a2_ptr)
    page_table_ptr = _pick(sid, pt0_ptr, pt1_ptr, pt2_ptr)
    ranks_ptr = _pick(sid, rk0_ptr, rk1_ptr, rk2_ptr)
    u_ptr += sid.to(tl.int64) * stride_us
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


@triton.jit(do_not_specialize=["m_blocks", "stride_us"])
def _sgmv_expand_slices_kernel(
    u_ptr, bt0_ptr, bt1_ptr, bt2_ptr, y0_ptr, y1_ptr, y2_ptr, pt0_ptr, pt1_ptr, pt2_ptr,
    rk0_ptr, rk1_ptr, rk2_ptr, sc0_ptr, sc1_ptr, sc2_ptr, nf0, nf1, nf2, syt0, syt1, syt2, syn0, syn1, syn2,
    sbp0, sbp1, sbp2,
    token_order_ptr, seg_starts_ptr, seg_lens_ptr, seg_slots_ptr,
    m_blocks, n_blocks, stride_us, stride_ut, stride_ur, stride_pts,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    sid = tl.program_id(1)
    bt_ptr = _pick(sid, bt0_ptr, bt1_ptr, bt2_ptr)
    y_ptr = _pick(sid, y0_ptr, y1_ptr, y2_ptr)
    page_table_ptr = _pick(sid, pt0_ptr, pt1_ptr, pt2_ptr)
    ranks_ptr = _pick(sid, rk0_ptr, rk1_ptr, rk2_ptr)
    scales_ptr = _pick(sid, sc0_ptr, sc1_ptr, sc2_ptr)
    out_features = _pick(sid, nf0, nf1, nf2)
    stride_yt = _pick(sid, syt0, syt1, syt2)
    stride_yn = _pick(sid, syn0, syn1, syn2)
    stride_bp = _pick(sid, sbp0, sbp1, sbp2)
    u_ptr += sid.to(tl.int64) * stride_us
    pid = tl.program_id(0)
    seg = pid // (m_blocks * n_blocks)
    m0 = (pid // n_blocks) % m_blocks * BLOCK_M
    n0 = pid % n_blocks * BLOCK_N
    if n0 >= out_features:  # a narrower slice (GQA k/v)
        return
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
    for r0 in range(0, rank, BLOCK_R):
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
        )  # (BR, BN) = B_s[slot].T tile
        u = u.to(bt_ptr.dtype.element_ty)
        if UPCAST_DOT:
            acc += tl.dot(u.to(tl.float32), bt.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(u, bt, input_precision=DOT_PRECISION)
    y_ptrs = y_ptr + tok[:, None] * stride_yt + offs_n[None, :] * stride_yn
    mask = mask_m[:, None] & mask_n[None, :]
    y = tl.load(y_ptrs, mask=mask, other=0.0)
    tl.store(y_ptrs, (y.to(tl.float32) + acc * scale).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["stride_us"])
def _bgmv_expand_slices_kernel(
    u_ptr, bt0_ptr, bt1_ptr, bt2_ptr, y0_ptr, y1_ptr, y2_ptr, pt0_ptr, pt1_ptr, pt2_ptr,
    rk0_ptr, rk1_ptr, rk2_ptr, sc0_ptr, sc1_ptr, sc2_ptr, nf0, nf1, nf2, syt0, syt1, syt2, syn0, syn1, syn2,
    sbp0, sbp1, sbp2,
    token_slots_ptr, n_blocks, stride_us, stride_ut, stride_ur, stride_pts,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    sid = tl.program_id(1)
    bt_ptr = _pick(sid, bt0_ptr, bt1_ptr, bt2_ptr)
    y_ptr = _pick(sid, y0_ptr, y1_ptr, y2_ptr)
    page_table_ptr = _pick(sid, pt0_ptr, pt1_ptr, pt2_ptr)
    ranks_ptr = _pick(sid, rk0_ptr, rk1_ptr, rk2_ptr)
    scales_ptr = _pick(sid, sc0_ptr, sc1_ptr, sc2_ptr)
    out_features = _pick(sid, nf0, nf1, nf2)
    stride_yt = _pick(sid, syt0, syt1, syt2)
    stride_yn = _pick(sid, syn0, syn1, syn2)
    stride_bp = _pick(sid, sbp0, sbp1, sbp2)
    u_ptr += sid.to(tl.int64) * stride_us
    pid = tl.program_id(0)
    tok = (pid // n_blocks).to(tl.int64)
    n0 = pid % n_blocks * BLOCK_N
    if n0 >= out_features:
        return
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
    for r0 in range(0, rank, BLOCK_R):
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


def _pad(items: Sequence[T]) -> list[T]:
    """A slice list padded to `MAX_SLICES` with its first item (no program of an absent slice is launched)."""
    return [*items, *[items[0]] * (MAX_SLICES - len(items))]


def slices_variant(
    stage: str, ws: Sequence[LoraWeights], act_dtype: torch.dtype, meta: BatchMeta, *, shared: bool
) -> Variant:
    """The variant a multi-slice launch uses (`kernels.variants.variant_key`, sliced): per-token for decode,
    segment tiles for prefill and, with `shared`, for decode rows sharing adapters (wide rank block)."""
    max_rank = max(w.max_rank for w in ws)
    features = ws[0].in_features if stage == "shrink" else max(w.out_features for w in ws)
    return variant_key(
        "shrink" if stage == "shrink" else "expand",
        features,
        ws[0].dtype,
        act_dtype,
        decode=meta.decode and not shared,
        max_seg_len=meta.max_seg_len,
        block_r=shared_block_r(max_rank) if shared else BLOCK_R,
        sliced=True,
    )


def lora_shrink_slices(
    x: Tensor, ws: Sequence[LoraWeights], meta: BatchMeta, out: Tensor, *, shared: bool | None = None
) -> Tensor:
    """out[s, t, :r_s] = x[t] @ A_s[slot].T for every slice s, one launch. x: (T, H_in); out: (n, T, R)
    float32; writes exactly the entries expand reads. The programs of the single-module launch of the same
    batch (same blocks, same reduction order): per-token (BGMV) for decode, so a decode row's u is the
    single-module BGMV's bit for bit and batch-invariant; segment tiles (SGMV) for prefill and, under the
    "shared" decode policy, for decode rows that share adapters (`kernels.variants.takes_shared`; `shared`
    forces the choice: how `kernels.warmup` reaches the wide rank blocks)."""
    max_rank = max(w.max_rank for w in ws)
    if meta.num_segments == 0 or max_rank == 0:
        return out
    w0 = ws[0]
    a = _pad([w.a_pages for w in ws])
    pt = _pad([w.page_table for w in ws])
    rk = _pad([w.ranks for w in ws])
    common = (out.stride(0), out.stride(1), out.stride(2))
    if shared is None:
        shared = meta.decode and takes_shared(meta)
    v = slices_variant("shrink", ws, x.dtype, meta, shared=shared)
    if v.block_m == 0:  # per-token
        r_blocks = cdiv(max_rank, BLOCK_R)
        _bgmv_shrink_slices_kernel[(meta.num_tokens * r_blocks, 1, len(ws))](
            x, *a, *pt, *rk, out, meta.token_slots, w0.in_features, r_blocks,
            x.stride(0), x.stride(1), w0.a_pages.stride(0), w0.page_table.stride(0), *common,
            BLOCK_R=BLOCK_R, BLOCK_K=v.block_f,
        )  # fmt: skip
        return out
    # Prefill, or decode rows sharing adapters (kernels/triton_shared_decode.py): dot tiles of a segment's
    # rows; in shared decode one rank block as wide as the largest rank (<= 64), so x is read once.
    r_blocks = cdiv(max_rank, v.block_r)
    m_blocks = cdiv(meta.max_seg_len, v.block_m)
    _sgmv_shrink_slices_kernel[(meta.num_segments * m_blocks * r_blocks, 1, len(ws))](
        x, *a, *pt, *rk, out, meta.token_order, meta.seg_starts, meta.seg_lens, meta.seg_slots,
        w0.in_features, m_blocks, r_blocks,
        x.stride(0), x.stride(1), w0.a_pages.stride(0), w0.page_table.stride(0), *common,
        BLOCK_M=v.block_m, BLOCK_R=v.block_r, BLOCK_K=v.block_f, DOT_PRECISION=_dot_precision(w0),
        UPCAST_DOT=_upcast_dot(w0),
    )  # fmt: skip
    return out


def lora_expand_slices(ys: Sequence[Tensor], u: Tensor, ws: Sequence[LoraWeights], meta: BatchMeta) -> None:
    """ys[s][t] += scale_s[slot] * u[s, t, :r_s] @ B_s[slot].T for every slice s, in place, one launch.
    ys[s]: (T, H_out_s), any strides; u: (n, T, R) float32. Programs as `lora_shrink_slices` chooses them."""
    max_rank = max(w.max_rank for w in ws)
    if meta.num_segments == 0 or max_rank == 0:
        return
    w0 = ws[0]
    widest = max(w.out_features for w in ws)
    per_slice = (
        *_pad([w.bt_pages for w in ws]),
        *_pad(list(ys)),
        *_pad([w.page_table for w in ws]),
        *_pad([w.ranks for w in ws]),
        *_pad([w.scales for w in ws]),
        *_pad([w.out_features for w in ws]),
        *_pad([y.stride(0) for y in ys]),
        *_pad([y.stride(1) for y in ys]),
        *_pad([w.bt_pages.stride(0) for w in ws]),
    )
    shared = meta.decode and takes_shared(meta)
    v = slices_variant("expand", ws, ys[0].dtype, meta, shared=shared)
    n_blocks = cdiv(widest, v.block_f)
    if v.block_m == 0:
        _bgmv_expand_slices_kernel[(meta.num_tokens * n_blocks, len(ws))](
            u, *per_slice, meta.token_slots, n_blocks, u.stride(0), u.stride(1), u.stride(2),
            w0.page_table.stride(0), BLOCK_N=v.block_f, BLOCK_R=BLOCK_R,
        )  # fmt: skip
        return
    m_blocks = cdiv(meta.max_seg_len, v.block_m)
    _sgmv_expand_slices_kernel[(meta.num_segments * m_blocks * n_blocks, len(ws))](
        u, *per_slice, meta.token_order, meta.seg_starts, meta.seg_lens, meta.seg_slots,
        m_blocks, n_blocks, u.stride(0), u.stride(1), u.stride(2), w0.page_table.stride(0),
        BLOCK_M=v.block_m, BLOCK_N=v.block_f, BLOCK_R=v.block_r, DOT_PRECISION=_dot_precision(w0),
        UPCAST_DOT=_upcast_dot(w0),
    )  # fmt: skip
