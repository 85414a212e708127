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
    bgmv_expand,
    bgmv_shrink,
    sgmv_expand,
    sgmv_shrink,
)
from kernels.variants import (
    MAX_BLOCK_R,
    SHARED_MIN_ROWS,
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
    """out[t, :r] = x[t] @ A[slot].T, rows of a slot in dot tiles: the segment kernel with a rank block up to
    MAX_BLOCK_R. x: (T, H_in); out: (T, R) float32; writes only the entries expand reads."""
    return sgmv_shrink(x, w, meta, out, block_r=shared_block_r(w.max_rank))


def shared_expand(y: Tensor, u: Tensor, w: LoraWeights, meta: BatchMeta) -> Tensor:
    """y[t] += scale[slot] * u[t, :r] @ B[slot].T in place, rows of a slot in dot tiles. y: (T, H_out)."""
    return sgmv_expand(y, u, w, meta, block_r=shared_block_r(w.max_rank))


def decode_shrink(x: Tensor, w: LoraWeights, meta: BatchMeta, out: Tensor) -> Tensor:
    """The decode shrink: `shared_shrink` when `kernels.variants.takes_shared(meta)`, else BGMV."""
    return (shared_shrink if takes_shared(meta) else bgmv_shrink)(x, w, meta, out)


def decode_expand(y: Tensor, u: Tensor, w: LoraWeights, meta: BatchMeta) -> Tensor:
    """The decode expand: `shared_expand` when `kernels.variants.takes_shared(meta)`, else BGMV."""
    return (shared_expand if takes_shared(meta) else bgmv_expand)(y, u, w, meta)
