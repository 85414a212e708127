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

Batch invariance. The padded blocks above are not batch-invariant: Lmax and Rmax come from the batch, and
a BLAS matmul picks its kernel, blocking and so its summation order by shape (MKL: a (1, K) @ (K, N) row gets
other bits than the same row inside (5, K) @ (K, N), and N = 8 vs 16 changes them too), and whether the path
declines depends on the batch. That is acceptable for prefill (a prompt chunk's bits already depend on its
chunking), not for decode: greedy tokens must not depend on batch-mates. So per-token (decode) metadata,
including a mixed step's decode part (`BatchMeta.split`), never takes the padded blocks; it takes
`lora_apply_per_token`, where every token is its own (1, H_in) @ (H_in, r) and (1, r) @ (r, H_out) problem
with r its adapter's own rank: the shapes, and so the bits, depend on the token and its adapter alone
(checked empirically across batch compositions, 1 and 2 threads, float32 and bfloat16:
tests/kernels/test_kernel_invariance.py).
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

    x: (T, H_in), y: (T, H_out) (2-D, any float dtype). Decode metadata runs `lora_apply_per_token`
    (batch-invariant, never declines). Otherwise returns False, doing nothing, when the padded blocks
    would cost more than `MAX_PADDING_FACTOR` times the exact work, or one padded adapter is larger than
    `MAX_GATHER_BYTES_PER_ADAPTER` (then use the reference).
    """
    if meta.num_segments == 0:
        return True
    if meta.decode:
        lora_apply_per_token(y, x, w, meta)
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


def lora_apply_per_token(y: Tensor, x: Tensor, w: LoraWeights, meta: BatchMeta) -> Tensor:
    """Decode tokens, batch-invariant: y[t] += scale[s] · (x[t] @ A[s]ᵀ) @ B[s]ᵀ, s = meta.row_slots[t].

    Tokens are grouped by their adapter's rank r (not padded to the batch's largest): per group one `bmm` of
    n (1, H_in) @ (H_in, r) problems and one `baddbmm` of n (1, r) @ (r, H_out), so a token's arithmetic is
    fixed by its own adapter (a batched matmul computes every problem of one shape alike, whatever n is).
    Small adapters are gathered per token (`MAX_GATHER_BYTES_PER_ADAPTER`: one op per rank, not per adapter);
    larger ones are read in place, one `bmm` per adapter over a broadcast view of its pages, the choice a
    function of the rank and the layer's width alone. Numerics as `_apply_row_major` (operands in the
    weights' dtype, float32 sums, u rounded to the weights' dtype then scaled, y rounded once).

    x: (T, H_in), y: (T, H_out) (rows of any strides for x; y updated in place). `meta`: per-token metadata
    with host `row_slots` (decode metadata, or a mixed step's `split.per_token`). Returns y.
    """
    slots = torch.tensor(meta.row_slots, dtype=torch.int64)  # (T,) host
    ranks = torch.where(slots >= 0, w.ranks.to("cpu")[slots.clamp(min=0)], 0)  # (T,)
    gather_limit = MAX_GATHER_BYTES_PER_ADAPTER // (
        (w.in_features + w.out_features) * w.a_pages.element_size()
    )
    device = x.device
    for r in torch.unique(ranks).tolist():
        if r == 0:
            continue
        tokens = (ranks == r).nonzero().squeeze(1)  # (n,) host
        if r <= gather_limit:
            _rank_group(y, x, w, r, tokens.to(device), slots[tokens].to(device))
        else:
            for slot in torch.unique(slots[tokens]).tolist():
                mine = tokens[slots[tokens] == slot].to(device)
                _rank_group(y, x, w, r, mine, None, slot)
    return y


def _rank_group(
    y: Tensor, x: Tensor, w: LoraWeights, r: int, tokens: Tensor, slots: Tensor | None, slot: int = -1
) -> None:
    """The n tokens `tokens` of rank-r adapters: `slots` (n,) their slots (pages gathered per token), or
    None with `slot` the one adapter they all use (its pages read through a broadcast view, no copy)."""
    n = tokens.shape[0]
    f32 = torch.float32
    if slots is not None:
        pages = w.page_table.index_select(0, slots)[:, :r]  # (n, r)
        a = w.a_pages[pages].to(f32)  # (n, r, H_in)
        bt = w.bt_pages[pages].to(f32)  # (n, r, H_out)
        scale = w.scales.index_select(0, slots)[:, None, None]  # (n, 1, 1)
    else:
        pages = w.page_table[slot, :r]  # (r,)
        a = w.a_pages[pages].to(f32)[None].expand(n, -1, -1)  # (n, r, H_in), one copy of the pages
        bt = w.bt_pages[pages].to(f32)[None].expand(n, -1, -1)  # (n, r, H_out)
        scale = w.scales[slot]
    xs = x.index_select(0, tokens).to(w.dtype).to(f32)[:, None, :]  # (n, 1, H_in), in the weights' dtype
    u = torch.bmm(xs, a.transpose(1, 2))  # (n, 1, r)
    u = u.to(w.dtype).to(f32) * scale  # u rounded as the reference, then scaled
    ys = torch.baddbmm(y.index_select(0, tokens).to(f32)[:, None, :], u, bt)  # (n, 1, H_out)
    y.index_copy_(0, tokens, ys[:, 0].to(y.dtype))
