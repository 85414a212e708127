"""Decode with shared adapters: rows that use the same adapter are multiplied together with `tl.dot`.

BGMV (`kernels.triton_lora`) runs a program per (row, rank block of 16): every row re-reads its adapter's
pages, and a row of rank 64 reads its `x` four times. When many decode rows share an adapter (one popular
fine-tune, S-LoRA's skewed traffic), this path groups them instead: the decode metadata's segments already
list the rows of every slot (`token_order`, sorted by slot), so a program takes a tile of up to BLOCK_M rows
of one slot and

- shrink: one rank block as wide as the batch's largest rank (16..64), so every x tile is read once and
  every A page once per tile of rows (not once per row): u_tile (BM, BR) = x_tile (BM, H_in) @ A.T;
- expand: y_tile (BM, BN) += scale * u_tile (BM, BR) @ B.T tile, B read once per tile of rows.

The kernels are the segment (SGMV) kernels of `kernels.triton_lora` launched with the wide rank block on
decode metadata: the same operations, so the numerics contract (operands in the weights' dtype, float32
accumulation, `u` rounded before expand) is the reference's. `use_shared_decode` decides from host fields
only (no device sync): rows per adapter >= `SHARED_MIN_ROWS` takes this path, BGMV otherwise (all-distinct
batches gain nothing from grouping and BGMV needs no padding of the rows to a dot tile).

Note: the two paths sum in a different order, so a row's output can differ in the last ulp depending on how
many batch-mates share its adapter (the batch-invariance goal of issue 18 wants one order per row).
"""

from __future__ import annotations

import triton
from torch import Tensor

from kernels.metadata import BatchMeta
from kernels.pool import LoraWeights
from kernels.triton_lora import (
    _dot_precision,
    _pow2_clamp,
    _sgmv_expand_kernel,
    _sgmv_shrink_kernel,
    _split_k,
    _upcast_dot,
    bgmv_expand,
    bgmv_shrink,
)

SHARED_MIN_ROWS = 4  # rows per adapter from which a dot tile beats per-row programs
MAX_BLOCK_R = 64  # widest rank block: ranks up to 64 read x once; wider ranks take ceil(r / 64) blocks


def use_shared_decode(meta: BatchMeta, min_rows_per_adapter: int = SHARED_MIN_ROWS) -> bool:
    """True when the decode batch's adapted rows average >= `min_rows_per_adapter` per adapter (slot).
    Pure: reads the metadata's host fields only."""
    if not meta.decode or meta.num_segments == 0:
        return False
    return sum(meta.host_seg_lens) >= min_rows_per_adapter * meta.num_segments


def shared_block_r(max_rank: int) -> int:
    """The rank block: the largest rank rounded up to a power of two, within [16, MAX_BLOCK_R]."""
    return _pow2_clamp(max_rank, 16, MAX_BLOCK_R)


def _block_m(meta: BatchMeta) -> int:
    return _pow2_clamp(meta.max_seg_len, 16, 64)


def shared_shrink(
    x: Tensor, w: LoraWeights, meta: BatchMeta, out: Tensor, *, split_k: int | None = None
) -> Tensor:
    """out[t, :r] = x[t] @ A[slot].T, rows of a slot in dot tiles. x: (T, H_in); out: (T, R) float32, zeroed."""
    if meta.num_segments == 0 or w.max_rank == 0:
        return out
    block_m, block_r = _block_m(meta), shared_block_r(w.max_rank)
    block_k = _pow2_clamp(w.in_features, 16, 128)
    m_blocks = triton.cdiv(meta.max_seg_len, block_m)
    r_blocks = triton.cdiv(w.max_rank, block_r)
    tiles = sum(triton.cdiv(n, block_m) for n in meta.host_seg_lens) * r_blocks
    splits, k_per_split = _split_k(tiles, w.in_features, block_k, x.device, split_k)
    grid = (meta.num_segments * m_blocks * r_blocks, splits)
    _sgmv_shrink_kernel[grid](
        x, w.a_pages, out, w.page_table, w.ranks,
        meta.token_order, meta.seg_starts, meta.seg_lens, meta.seg_slots,
        w.in_features, m_blocks, r_blocks, k_per_split,
        x.stride(0), x.stride(1), w.a_pages.stride(0), w.page_table.stride(0), out.stride(0), out.stride(1),
        BLOCK_M=block_m, BLOCK_R=block_r, BLOCK_K=block_k, SPLIT_K=splits, DOT_PRECISION=_dot_precision(w),
        UPCAST_DOT=_upcast_dot(w),
    )  # fmt: skip
    return out


def shared_expand(y: Tensor, u: Tensor, w: LoraWeights, meta: BatchMeta) -> Tensor:
    """y[t] += scale[slot] * u[t, :r] @ B[slot].T in place, rows of a slot in dot tiles. y: (T, H_out)."""
    if meta.num_segments == 0 or w.max_rank == 0:
        return y
    block_m, block_r = _block_m(meta), shared_block_r(w.max_rank)
    block_n = _pow2_clamp(w.out_features, 16, 128)
    m_blocks = triton.cdiv(meta.max_seg_len, block_m)
    n_blocks = triton.cdiv(w.out_features, block_n)
    grid = (meta.num_segments * m_blocks * n_blocks,)
    _sgmv_expand_kernel[grid](
        u, w.bt_pages, y, w.page_table, w.ranks, w.scales,
        meta.token_order, meta.seg_starts, meta.seg_lens, meta.seg_slots,
        w.out_features, m_blocks, n_blocks,
        u.stride(0), u.stride(1), w.bt_pages.stride(0), w.page_table.stride(0), y.stride(0), y.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_R=block_r, DOT_PRECISION=_dot_precision(w),
        UPCAST_DOT=_upcast_dot(w),
    )  # fmt: skip
    return y


def decode_shrink(
    x: Tensor, w: LoraWeights, meta: BatchMeta, out: Tensor, *, split_k: int | None = None
) -> Tensor:
    """The decode shrink: `shared_shrink` when `use_shared_decode(meta)`, else BGMV."""
    kernel = shared_shrink if use_shared_decode(meta) else bgmv_shrink
    return kernel(x, w, meta, out, split_k=split_k)


def decode_expand(y: Tensor, u: Tensor, w: LoraWeights, meta: BatchMeta) -> Tensor:
    """The decode expand: `shared_expand` when `use_shared_decode(meta)`, else BGMV."""
    return (shared_expand if use_shared_decode(meta) else bgmv_expand)(y, u, w, meta)
