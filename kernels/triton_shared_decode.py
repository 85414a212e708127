"""Decode with shared adapters: rows that use the same adapter are multiplied together with `tl.dot`. Opt-in.

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
accumulation, `u` rounded before expand) is the reference's. No split-K, no atomics; variants from
`kernels.variants.variant_key` (so `kernels.warmup` compiles them under the "shared" policy).

Switch (the trade-off): the dot tiles sum in another order than BGMV, and a batch takes them only when its
rows share adapters (`use_shared_decode`: rows per adapter >= `SHARED_MIN_ROWS`), so under this path a
row's last bits depend on how many batch-mates share its adapter: decode is no longer batch-invariant
(issue 18), and greedy tokens may differ from the same request served alone. The default decode policy is
therefore "bgmv" (always per-token, invariant); opt in with `SWAPYARD_SHARED_DECODE=1` (read once, at
import of `kernels.variants`) or `kernels.set_decode_policy("shared")` before `kernels.warmup`. Static
decode metadata (CUDA graphs) always runs BGMV.
"""

from __future__ import annotations

from torch import Tensor

from kernels.metadata import BatchMeta
from kernels.pool import LoraWeights
from kernels.triton_lora import (
    _dot_precision,
    _sgmv_expand_kernel,
    _sgmv_shrink_kernel,
    _upcast_dot,
    bgmv_expand,
    bgmv_shrink,
    lora_variant,
)
from kernels.variants import (
    MAX_BLOCK_R,
    SHARED_MIN_ROWS,
    cdiv,
    shared_block_r,
    takes_shared,
    use_shared_decode,
)

__all__ = [
    "MAX_BLOCK_R",
    "SHARED_MIN_ROWS",
    "decode_expand",
    "decode_shrink",
    "shared_block_r",
    "shared_expand",
    "shared_shrink",
    "use_shared_decode",
]


def shared_shrink(x: Tensor, w: LoraWeights, meta: BatchMeta, out: Tensor) -> Tensor:
    """out[t, :r] = x[t] @ A[slot].T, rows of a slot in dot tiles. x: (T, H_in); out: (T, R) float32.

    Writes exactly the entries expand reads (tokens with a slot, j < r[slot]); leaves the rest as they are.
    """
    if meta.num_segments == 0 or w.max_rank == 0:
        return out
    block_r = shared_block_r(w.max_rank)
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


def shared_expand(y: Tensor, u: Tensor, w: LoraWeights, meta: BatchMeta) -> Tensor:
    """y[t] += scale[slot] * u[t, :r] @ B[slot].T in place, rows of a slot in dot tiles. y: (T, H_out)."""
    if meta.num_segments == 0 or w.max_rank == 0:
        return y
    block_r = shared_block_r(w.max_rank)
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


def decode_shrink(x: Tensor, w: LoraWeights, meta: BatchMeta, out: Tensor) -> Tensor:
    """The decode shrink: `shared_shrink` when `kernels.variants.takes_shared(meta)`, else BGMV."""
    return (shared_shrink if takes_shared(meta) else bgmv_shrink)(x, w, meta, out)


def decode_expand(y: Tensor, u: Tensor, w: LoraWeights, meta: BatchMeta) -> Tensor:
    """The decode expand: `shared_expand` when `kernels.variants.takes_shared(meta)`, else BGMV."""
    return (shared_expand if takes_shared(meta) else bgmv_expand)(y, u, w, meta)
