"""Multi-slice Triton LoRA kernels: one launch shrinks (or expands) up to `MAX_SLICES` sibling modules.

Sibling modules read the same input `x` (q/k/v of an attention block, gate/up of a gated MLP) and each keeps
its own `LoraPool`. Where `kernels.triton_lora` launches one shrink and one expand per module, these take the
pools of a group at once, as vLLM's multi-slice `lora_shrink` / `lora_expand` do (there over a merged base
output with column offsets; here every slice keeps its own tensors):

- shrink: `u[s, t, :r] = x[t] @ A_s[slot].T` for every slice s, one launch, `u` (n, T, R) float32;
- expand: `y_s[t] += scale_s[slot] * u[s, t, :r] @ B_s[slot].T` for every slice s, one launch.

The slice is the last grid axis; a program picks its slice's pointers (`_pick`) and then calls the
single-module kernel of `kernels.triton_lora` as a function (a `@triton.jit` function may call another, kernels
included: inlined when compiled; `tl.program_id(0)` there is this launch's), so a slice's program is the
single-module program, and its result is bit-identical to the single-module launch. Slices may differ in output width and in each
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
from kernels.triton_lora import (
    _bgmv_expand_kernel,
    _bgmv_shrink_kernel,
    _dot_precision,
    _sgmv_expand_kernel,
    _sgmv_shrink_kernel,
    _upcast_dot,
)
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
    _sgmv_shrink_kernel(
        x_ptr, _pick(sid, a0_ptr, a1_ptr, a2_ptr), u_ptr + sid.to(tl.int64) * stride_us,
        _pick(sid, pt0_ptr, pt1_ptr, pt2_ptr), _pick(sid, rk0_ptr, rk1_ptr, rk2_ptr),
        token_order_ptr, seg_starts_ptr, seg_lens_ptr, seg_slots_ptr,
        in_features, m_blocks, r_blocks,
        stride_xt, stride_xk, stride_ap, stride_pts, stride_ut, stride_ur,
        BLOCK_M, BLOCK_R, BLOCK_K, DOT_PRECISION, UPCAST_DOT,
    )  # fmt: skip


@triton.jit(do_not_specialize=["r_blocks", "stride_us"])
def _bgmv_shrink_slices_kernel(
    x_ptr, a0_ptr, a1_ptr, a2_ptr, pt0_ptr, pt1_ptr, pt2_ptr, rk0_ptr, rk1_ptr, rk2_ptr, u_ptr,
    token_slots_ptr, in_features, r_blocks,
    stride_xt, stride_xk, stride_ap, stride_pts, stride_us, stride_ut, stride_ur,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    sid = tl.program_id(2)
    _bgmv_shrink_kernel(
        x_ptr, _pick(sid, a0_ptr, a1_ptr, a2_ptr), u_ptr + sid.to(tl.int64) * stride_us,
        _pick(sid, pt0_ptr, pt1_ptr, pt2_ptr), _pick(sid, rk0_ptr, rk1_ptr, rk2_ptr), token_slots_ptr,
        in_features, r_blocks,
        stride_xt, stride_xk, stride_ap, stride_pts, stride_ut, stride_ur,
        BLOCK_R, BLOCK_K,
    )  # fmt: skip


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
    pid = tl.program_id(0)
    out_features = _pick(sid, nf0, nf1, nf2)
    if pid % n_blocks * BLOCK_N >= out_features:  # an output block past a narrower slice (GQA k/v)
        return
    _sgmv_expand_kernel(
        u_ptr + sid.to(tl.int64) * stride_us, _pick(sid, bt0_ptr, bt1_ptr, bt2_ptr),
        _pick(sid, y0_ptr, y1_ptr, y2_ptr), _pick(sid, pt0_ptr, pt1_ptr, pt2_ptr),
        _pick(sid, rk0_ptr, rk1_ptr, rk2_ptr), _pick(sid, sc0_ptr, sc1_ptr, sc2_ptr),
        token_order_ptr, seg_starts_ptr, seg_lens_ptr, seg_slots_ptr,
        out_features, m_blocks, n_blocks,
        stride_ut, stride_ur, _pick(sid, sbp0, sbp1, sbp2), stride_pts,
        _pick(sid, syt0, syt1, syt2), _pick(sid, syn0, syn1, syn2),
        BLOCK_M, BLOCK_N, BLOCK_R, DOT_PRECISION, UPCAST_DOT,
    )  # fmt: skip


@triton.jit(do_not_specialize=["stride_us"])
def _bgmv_expand_slices_kernel(
    u_ptr, bt0_ptr, bt1_ptr, bt2_ptr, y0_ptr, y1_ptr, y2_ptr, pt0_ptr, pt1_ptr, pt2_ptr,
    rk0_ptr, rk1_ptr, rk2_ptr, sc0_ptr, sc1_ptr, sc2_ptr, nf0, nf1, nf2, syt0, syt1, syt2, syn0, syn1, syn2,
    sbp0, sbp1, sbp2,
    token_slots_ptr, n_blocks, stride_us, stride_ut, stride_ur, stride_pts,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    sid = tl.program_id(1)
    pid = tl.program_id(0)
    out_features = _pick(sid, nf0, nf1, nf2)
    if pid % n_blocks * BLOCK_N >= out_features:  # an output block past a narrower slice (GQA k/v)
        return
    _bgmv_expand_kernel(
        u_ptr + sid.to(tl.int64) * stride_us, _pick(sid, bt0_ptr, bt1_ptr, bt2_ptr),
        _pick(sid, y0_ptr, y1_ptr, y2_ptr), _pick(sid, pt0_ptr, pt1_ptr, pt2_ptr),
        _pick(sid, rk0_ptr, rk1_ptr, rk2_ptr), _pick(sid, sc0_ptr, sc1_ptr, sc2_ptr), token_slots_ptr,
        out_features, n_blocks,
        stride_ut, stride_ur, _pick(sid, sbp0, sbp1, sbp2), stride_pts,
        _pick(sid, syt0, syt1, syt2), _pick(sid, syn0, syn1, syn2),
        BLOCK_N, BLOCK_R,
    )  # fmt: skip


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
