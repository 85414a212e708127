"""Decode attention over key tiles with an online softmax, shared by the eager paged step (attention.py) and
the static decode step (static_decode.py).

A decode step's rows attend one query each over their gathered blocks. Gathering a row's whole stream costs
memory that grows with its context (rows · Hkv · keys · hd, twice: keys and values); here the blocks are
gathered `per_tile` blocks at a time and merged into a running max, sum and weighted sum (flash-decoding's
online softmax), so a step's transient memory is one tile's, whatever the context. Each tile is gathered,
used and released inside `Online.add`: nothing of a tile outlives the call, so two tiles are never alive
at once.

Layout: heads first. The pool is (Hkv, slots, hd); gathering blocks from it gives (Hkv, rows, keys, hd)
contiguous, and the query is regrouped once to (Hkv, rows, g, hd) (query head h uses key/value head h // g):
the two matmuls then run on contiguous batches, with no copy of the keys.

The softmax is exact (up to rounding): the running max starts at the dtype's lowest finite value rather than
-inf, so a tile in which a row sees no key (its weights exp(-inf) = 0) leaves the row's state as it was, and the
first seen key's rescaling exp(lowest - max) is 0. Every row sees at least its own new key, so its sum is > 0.
"""

from __future__ import annotations

import torch


def gather_heads(pool: torch.Tensor, blocks: torch.Tensor, block_size: int) -> torch.Tensor:
    """pool (Hkv, slots, hd), blocks (R, nb) -> (Hkv, R, nb · block_size, hd) contiguous: whole blocks, one copy."""
    rows, nb = blocks.shape
    heads, _, width = pool.shape
    paged = pool.view(heads, -1, block_size, width)  # (Hkv, num_blocks, bs, hd)
    return paged.index_select(1, blocks.reshape(-1)).view(heads, rows, nb * block_size, width)


class Online:
    """The running state of R rows' decode attention: q (R, Hq, 1, hd) attends tile by tile (`add`), `result`
    gives (R, Hq, hd). Scores are computed in the query's dtype, the running state in float32 (or float64).
    A tile costs a dozen small ops whatever its width (the state is updated in place, views made once)."""

    def __init__(self, q: torch.Tensor, kv_heads: int, scale: float, softcap: float | None) -> None:
        rows, hq, _, hd = q.shape
        self.rows, self.hq, self.hd, self.kv_heads, self.softcap = rows, hq, hd, kv_heads, softcap
        group = hq // kv_heads
        # (Hkv · R, g, hd) contiguous, the scale folded in once
        self.q = q.reshape(rows, kv_heads, group, hd).transpose(0, 1).mul(scale).reshape(-1, group, hd)
        state = torch.promote_types(q.dtype, torch.float32)
        self.peak = q.new_full((kv_heads * rows, group, 1), torch.finfo(state).min, dtype=state)
        self.total = q.new_zeros((kv_heads * rows, group, 1), dtype=state)
        self.acc = q.new_zeros((kv_heads * rows, group, hd), dtype=state)

    def add(
        self,
        k_pool: torch.Tensor,
        v_pool: torch.Tensor,
        blocks: torch.Tensor,
        block_size: int,
        hidden: torch.Tensor | None,
        bias: torch.Tensor | None = None,
    ) -> None:
        """Merge the keys/values of `blocks` (R, n) gathered from the pools (Hkv, slots, hd). `hidden` (R, n · bs)
        bool: True where the row does not see the key (None: it sees all); `bias` (R, Hq, 1, n · bs) added to
        the scaled (softcapped) scores, or None. The tile is released when this returns."""
        k = gather_heads(k_pool, blocks, block_size)
        self.add_keys(k, gather_heads(v_pool, blocks, block_size), hidden, bias)

    def add_keys(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        hidden: torch.Tensor | None,
        bias: torch.Tensor | None = None,
    ) -> None:
        """As `add`, for keys/values already laid out (Hkv, R, w, hd)."""
        width = k.shape[2]
        scores = torch.bmm(self.q, k.view(-1, width, self.hd).transpose(1, 2))  # (Hkv · R, g, w)
        del k
        if self.softcap is not None:
            scores = torch.tanh(scores.div_(self.softcap)).mul_(self.softcap)
        if bias is not None:  # (R, Hq, 1, w) -> (Hkv, R, g, w)
            grouped = scores.view(self.kv_heads, self.rows, -1, width)
            grouped += bias.reshape(self.rows, self.kv_heads, -1, width).transpose(0, 1)
        if hidden is not None:  # (R, w) -> (1, R, 1, w) over (Hkv, R, g, w)
            scores.view(self.kv_heads, self.rows, -1, width).masked_fill_(
                hidden[None, :, None], float("-inf")
            )
        if scores.dtype != self.peak.dtype:
            scores = scores.to(self.peak.dtype)
        peak = torch.maximum(self.peak, scores.amax(dim=-1, keepdim=True))
        keep = self.peak.sub_(peak).exp_()  # rescales what earlier tiles summed (0 before any seen key)
        weights = scores.sub_(peak).exp_()
        self.peak = peak
        self.total = weights.sum(dim=-1, keepdim=True).addcmul_(self.total, keep)
        self.acc.mul_(keep)
        v3 = v.view(-1, width, self.hd)
        if weights.dtype == v3.dtype:
            self.acc.baddbmm_(weights, v3)
        else:
            self.acc.add_(torch.bmm(weights.to(v3.dtype), v3))

    def result(self, dtype: torch.dtype) -> torch.Tensor:
        """(R, Hq, hd) in `dtype`."""
        out = self.acc.div_(self.total).view(self.kv_heads, self.rows, -1, self.hd).transpose(0, 1)
        return out.reshape(self.rows, self.hq, self.hd).to(dtype)


def one_tile(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    blocks: torch.Tensor,
    block_size: int,
    hidden: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Rows whose streams fit in one tile, with neither softcapping nor a bias: one fused SDPA over the gathered
    tile (the memory of one tile, as `Online`, at about half its time for short streams). The g query heads of
    a key/value head are g queries of one SDPA head, so no key is repeated for GQA.
    q (R, Hq, 1, hd), blocks (R, n), hidden (R, n · bs) or None -> (R, Hq, hd)."""
    rows, hq, _, hd = q.shape
    kv_heads = k_pool.shape[0]
    k = gather_heads(k_pool, blocks, block_size).transpose(0, 1)  # (R, Hkv, w, hd)
    v = gather_heads(v_pool, blocks, block_size).transpose(0, 1)
    mask = None if hidden is None else ~hidden[:, None, None]  # (R, 1, 1, w): the keys each row sees
    qg = q.reshape(rows, kv_heads, hq // kv_heads, hd)
    out = torch.nn.functional.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)
    return out.reshape(rows, hq, hd)
