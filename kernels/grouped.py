"""The CPU fast path of `lora_apply`: every segment at once with two batched matmuls.

The reference (`kernels.reference`) runs two small matmuls per segment; with 32-64 adapters in a batch and
~30 adapted layers that is thousands of tiny ops per forward, and on a CPU their fixed cost (dispatch,
thread wake-ups) dominates. This path gathers the batch's adapters and tokens into padded blocks and runs
one `bmm` for shrink and one for expand:

    X:  (S, Lmax, H_in)   tokens of segment s (zero rows past its length)
    A:  (S, Rmax, H_in)   slot s's lora_A pages (rows past its rank masked to zero in U)
    U = X @ Aᵀ            (S, Lmax, Rmax), float32, columns >= r[s] zeroed
    D = (U @ Bᵀ) · scale  (S, Lmax, H_out), Bᵀ gathered like A
    y[tokens] += D[valid]

Same semantics and rounding as the reference (operands in the weights' dtype, float32 sums, one rounding of
y). It spends compute on padding (segment lengths up to Lmax, ranks up to Rmax), so `lora_apply_grouped`
declines (returns False) when padding would more than double the work; the caller then runs the reference.
This is a CPU trade-off only: the Triton kernels never compute on padding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.metadata import BatchMeta
from kernels.pool import LoraWeights

MAX_PADDING_FACTOR = 2.0
# Gathering copies each adapter's pages (r · (H_in + H_out) values) before the matmuls read them, where the
# per-segment reference reads them in place. That copy is cheaper than the loop's per-segment op overhead
# only for small adapters; past this size per padded adapter, decline and let the reference run.
MAX_GATHER_BYTES_PER_ADAPTER = 256 << 10
# Below this many padded multiply-adds the padding costs less than the per-segment loop's fixed overhead
# (decode steps of small models): take the batched path whatever the padding factor.
SMALL_PADDED_WORK = 1 << 22


def lora_apply_grouped(y: Tensor, x: Tensor, w: LoraWeights, meta: BatchMeta) -> bool:
    """y[t] += scale[s] · (x[t] @ A[s]ᵀ) @ B[s]ᵀ for every token with a loaded slot, in place.

    x: (T, H_in), y: (T, H_out) (2-D, any float dtype). Returns False, doing nothing, when the padded blocks
    would cost more than `MAX_PADDING_FACTOR` times the exact work, or one padded adapter is larger than
    `MAX_GATHER_BYTES_PER_ADAPTER` (then use the reference).
    """
    if meta.num_segments == 0:
        return True
    r_cap = int(w.ranks.max()) if w.ranks.numel() else 0
    adapter_bytes = r_cap * (w.in_features + w.out_features) * w.a_pages.element_size()
    if adapter_bytes > MAX_GATHER_BYTES_PER_ADAPTER:
        return False
    if meta.uniform_row_len and y.is_contiguous():
        return _apply_row_major(y, x, w, meta)
    return lora_apply_segments(y, x, w, meta)


def lora_apply_segments(y: Tensor, x: Tensor, w: LoraWeights, meta: BatchMeta) -> bool:
    """The segment layout (rows of any lengths): tokens gathered into (S, Lmax) padded blocks."""
    if meta.num_segments == 0:
        return True
    seg_slots = torch.tensor(meta.host_seg_slots, dtype=torch.int64)  # (S,)
    ranks_all = w.ranks.to("cpu")
    ranks = ranks_all[seg_slots]  # (S,)
    lens = torch.tensor(meta.host_seg_lens, dtype=torch.int64)  # (S,)
    r_max, l_max = int(ranks.max()), meta.max_seg_len
    if r_max == 0:
        return True
    exact = int((ranks * lens).sum())
    if exact == 0:
        return True
    padded = meta.num_segments * l_max * r_max
    if padded > MAX_PADDING_FACTOR * exact and padded * (w.in_features + w.out_features) > SMALL_PADDED_WORK:
        return False
    device = x.device
    # Padded token index: (S, Lmax) positions into x, padding -> an extra zero row at index T.
    pos = torch.arange(l_max, dtype=torch.int64)  # (Lmax,)
    valid = pos[None, :] < lens[:, None]  # (S, Lmax)
    starts = torch.tensor(meta.host_seg_starts, dtype=torch.int64)  # (S,)
    flat = (starts[:, None] + pos[None, :]).clamp(max=max(meta.token_order.shape[0] - 1, 0))  # (S, Lmax)
    tok = torch.where(valid, meta.token_order.to("cpu")[flat], torch.full_like(flat, meta.num_tokens))
    tok = tok.to(device)

    x_ext = torch.cat([x.to(w.dtype), x.new_zeros(1, x.shape[1], dtype=w.dtype)])  # (T+1, H_in)
    xs = x_ext[tok]  # (S, Lmax, H_in)
    pages = w.page_table.index_select(0, seg_slots.to(device))[:, :r_max]  # (S, Rmax)
    a = w.a_pages[pages]  # (S, Rmax, H_in)
    bt = w.bt_pages[pages]  # (S, Rmax, H_out)

    u = torch.bmm(xs.float(), a.float().transpose(1, 2))  # (S, Lmax, Rmax), float32
    rank_mask = (torch.arange(r_max)[None, :] < ranks[:, None]).to(device)  # (S, Rmax)
    u = (u * rank_mask[:, None, :]).to(w.dtype).float()  # padding ranks -> 0; u rounded as the reference
    d = torch.bmm(u, bt.float())  # (S, Lmax, H_out)
    d = d * w.scales.index_select(0, seg_slots.to(device))[:, None, None]
    order = tok[valid.to(device)]  # (Ta,) tokens in segment order
    delta = d[valid.to(device)]  # (Ta, H_out)
    ys = y.index_select(0, order).float() + delta
    y.index_copy_(0, order, ys.to(y.dtype))
    return True


def _apply_row_major(y: Tensor, x: Tensor, w: LoraWeights, meta: BatchMeta) -> bool:
    """Rows of equal length L in their natural order (a padded batch, or decode): no token gather at all.

    Every row gathers its own adapter (rows sharing one gather it twice: cheap next to the activations):
        x: (B, L, H_in) view,  A: (B, Rmax, H_in),  Bᵀ: (B, Rmax, H_out),  y: (B, L, H_out) view
    Rows with slot -1 or an empty slot get a zero multiplier, so `y += 0` leaves them bit-identical.
    """
    n_rows, length = len(meta.row_slots), meta.uniform_row_len
    slots = torch.tensor(meta.row_slots, dtype=torch.int64)  # (B,)
    ranks_all = w.ranks.to("cpu")
    ranks = torch.where(slots >= 0, ranks_all[slots.clamp(min=0)], 0)  # (B,)
    r_max = int(ranks.max())
    if r_max == 0:
        return True
    exact = int(ranks.sum()) * length
    padded = n_rows * length * r_max
    if padded > MAX_PADDING_FACTOR * exact and padded * (w.in_features + w.out_features) > SMALL_PADDED_WORK:
        return lora_apply_segments(y, x, w, meta)
    device = x.device
    safe = slots.clamp(min=0).to(device)
    pages = w.page_table.index_select(0, safe)[:, :r_max]  # (B, Rmax)
    a = w.a_pages[pages]  # (B, Rmax, H_in)
    bt = w.bt_pages[pages]  # (B, Rmax, H_out)
    keep = (torch.arange(r_max)[None, :] < ranks[:, None]).to(device)  # (B, Rmax)
    mult = keep * w.scales.index_select(0, safe)[:, None]  # (B, Rmax): rank mask · scale
    xs = x.reshape(n_rows, length, -1).to(w.dtype)  # (B, L, H_in)
    u = (
        torch.bmm(xs, a.transpose(1, 2))
        if w.dtype == torch.float32
        else torch.bmm(xs.float(), a.float().transpose(1, 2))
    )
    u = u.to(w.dtype).float() * mult[:, None, :]  # (B, L, Rmax)
    y3 = y.view(n_rows, length, -1)  # (B, L, H_out)
    if y.dtype == torch.float32:
        y3.baddbmm_(u, bt.float())  # y += u @ Bᵀ in one pass over y (no (B, L, H_out) temporary)
    else:
        y3.copy_(torch.baddbmm(y3.float(), u, bt.float()).to(y.dtype))
    return True
