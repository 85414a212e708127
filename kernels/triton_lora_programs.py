"""The four LoRA programs: what one Triton program of a shrink or expand launch computes.

`kernels.triton_lora` (one module per launch) and `kernels.triton_fused` (up to three sibling modules per
launch) run the same programs: a single-module kernel calls one with `tl.program_id(0)`; a multi-slice kernel
first picks its slice's pointers, strides and widths (the slice is a grid axis), then calls the same one.
So a slice's result is the single-module launch's bit for bit, by construction (`@triton.jit` functions
called from a kernel are inlined when compiled; the interpreter just calls them).

`pid` is the program's index along grid axis 0; the other arguments are the kernels' (see
`kernels.triton_lora` for the numerics contract and the launch shapes):

- SGMV (segment tiles): `pid` -> (segment, tile of BLOCK_M tokens, rank block | output block);
- BGMV (per token): `pid` -> (token, rank block | output block); tokens without an adapter exit at once.

No split-K, no atomics: each program reduces over all of H_in (shrink) or the slot's rank (expand) in an
order fixed by the geometry and stores its own result, so a decode row is batch-invariant.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def sgmv_shrink_program(
    pid, x_ptr, a_ptr, u_ptr, page_table_ptr, ranks_ptr,
    token_order_ptr, seg_starts_ptr, seg_lens_ptr, seg_slots_ptr,
    in_features, m_blocks, r_blocks,
    stride_xt, stride_xk, stride_ap, stride_pts, stride_ut, stride_ur,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """u[tok, r0:r0+BR] = x[tok] @ A[slot, r0:r0+BR].T for a tile of BLOCK_M tokens of one segment."""
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


@triton.jit
def sgmv_expand_program(
    pid, u_ptr, bt_ptr, y_ptr, page_table_ptr, ranks_ptr, scales_ptr,
    token_order_ptr, seg_starts_ptr, seg_lens_ptr, seg_slots_ptr,
    out_features, m_blocks, n_blocks,
    stride_ut, stride_ur, stride_bp, stride_pts, stride_yt, stride_yn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """y[tok, n0:n0+BN] += scale[slot] * u[tok, :r] @ B[slot, n0:n0+BN].T for a tile of one segment."""
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


@triton.jit
def bgmv_shrink_program(
    pid, x_ptr, a_ptr, u_ptr, page_table_ptr, ranks_ptr, token_slots_ptr,
    in_features, r_blocks,
    stride_xt, stride_xk, stride_ap, stride_pts, stride_ut, stride_ur,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """u[tok, r0:r0+BR] = x[tok] @ A[slot, r0:r0+BR].T for one token (products summed in float32)."""
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
def bgmv_expand_program(
    pid, u_ptr, bt_ptr, y_ptr, page_table_ptr, ranks_ptr, scales_ptr, token_slots_ptr,
    out_features, n_blocks,
    stride_ut, stride_ur, stride_bp, stride_pts, stride_yt, stride_yn,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """y[tok, n0:n0+BN] += scale[slot] * u[tok, :r] @ B[slot, n0:n0+BN].T for one token."""
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
