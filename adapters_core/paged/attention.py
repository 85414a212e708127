"""Paged attention: each row attends over its own blocks of the pool (kv_cache.py), registered with
transformers' `AttentionInterface` as "swapyard_paged" so every model whose attention calls `cache.update`
and then the attention interface runs on it unchanged.

Per layer call: `query` (1, Hq, T, hd) of the packed stream; the keys and values of this step are already in
the pool (`StepCache.update`). One-token chunks (decode) attend as one batch: their streams gathered into
(B, Hkv, M + C, hd) with a key mask, one SDPA. Longer chunks (prefill) attend one by one over their gathered
stream with a causal mask offset by `start`. A prefix-tuning row's read-only prefix keys come first. Sliding
windows, GQA, the module's scaling and Gemma 2's logit softcapping are honoured; windows count each row's own
(extended) positions (batch.py), as the row alone would. ALiBi families (families.py) pass `alibi`: a callable
(extended key positions (R, S), a bound on them, dtype) -> an additive per-head bias (R, Hq, 1, S) on the
scaled scores.

The mask interface is left without a "swapyard_paged" entry on purpose: transformers then builds no (T, T)
mask at all (masking_utils exits early for attention implementations it has no mask function for).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from kernels import paged_attention as paged_kernel

from .batch import Decode, Prefill
from .kv_cache import StepCache

NAME = "swapyard_paged"
# Decode rows whose streams are longer than this attend tile by tile (online softmax), so that a step's transient
# gather is at most rows × KEY_TILE keys per layer whatever the context length.
KEY_TILE = 1024
MARK = (
    "_swapyard_paged"  # attribute of every attention module: a one-element list holding the running StepCache
)


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """q (B, Hq, n, hd), k/v (B, Hkv, S, hd), mask (B, 1, n, S) bool or None (all seen), bias (B, Hq, 1, S)
    added to the scaled scores or None -> (B, Hq, n, hd)."""
    if bias is not None:  # a float mask: the bias where seen, -inf elsewhere
        mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=True)
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.tanh(torch.matmul(q, k.transpose(-1, -2)) * scaling / softcap) * softcap
    if mask is not None:
        scores = scores + mask if mask.is_floating_point() else scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, v)


def _gather(pool: torch.Tensor, blocks: torch.Tensor, block_size: int) -> torch.Tensor:
    """pool (Hkv, slots, hd), blocks (R, nb) -> (R, Hkv, nb · block_size, hd): whole blocks, one copy each."""
    rows, nb = blocks.shape
    heads, _, width = pool.shape
    paged = pool.view(heads, -1, block_size, width)  # (Hkv, num_blocks, bs, hd)
    return paged.index_select(1, blocks.flatten()).view(heads, rows, nb * block_size, width).transpose(0, 1)


def _with_prefix(
    keys: torch.Tensor,
    values: torch.Tensor,
    prefixes: dict[int, list[int]],
    widths: list[int],
    layer: int,
    cache: StepCache,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepend each row's prefix (left-aligned in M = max width columns) to its gathered keys/values."""
    width = max(widths)
    if not width:
        return keys, values
    shape = (keys.shape[0], keys.shape[1], width, keys.shape[3])
    pk, pv = keys.new_zeros(shape), values.new_zeros(shape)
    for slot, rows in prefixes.items():
        k, v = cache.batch.extras["prefix"][slot][layer]  # (Hkv, m, hd)
        pk[rows, :, : k.shape[1]] = k
        pv[rows, :, : v.shape[1]] = v
    return torch.cat([pk, keys], dim=2), torch.cat([pv, values], dim=2)


def _decode_tiled(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    dec: Decode,
    layer: int,
    cache: StepCache,
    window: int | None,
    scale: float,
    softcap: float | None,
    alibi: Any = None,
) -> torch.Tensor:
    """Decode attention over KEY_TILE keys at a time, merged with a running max and sum (online softmax).
    q (B, Hq, 1, hd) -> (B, Hq, hd)."""
    rows, hq, _, hd = q.shape
    bs = cache.pool.block_size
    hkv = k_pool.shape[0]
    qg = q.view(rows, hkv, hq // hkv, hd)  # query head h uses key/value head h // group
    peak = qg.new_full((rows, hkv, hq // hkv, 1), float("-inf"))
    total = qg.new_zeros(rows, hkv, hq // hkv, 1)
    acc = qg.new_zeros(rows, hkv, hq // hkv, hd)
    tiles: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []  # k, v, mask, positions
    if max(dec.prefix):
        empty = qg.new_zeros(rows, hkv, 0, hd)
        pk, pv = _with_prefix(empty, empty, dec.prefix_slots, dec.prefix, layer, cache)
        tiles.append((pk, pv, dec.prefix_mask(window), _prefix_positions(dec)))
    per_tile = max(1, KEY_TILE // bs)
    for first in range(0, dec.blocks.shape[1], per_tile):
        blocks = dec.blocks[:, first : first + per_tile]
        k, v = _gather(k_pool, blocks, bs), _gather(v_pool, blocks, bs)
        at, width = first * bs, k.shape[2]
        tiles.append((k, v, dec.stream_mask(window, at, width), _stream_positions(dec, at, width)))
        for k, v, mask, positions in tiles:
            scores = torch.matmul(qg, k.transpose(-1, -2)) * scale  # (B, Hkv, g, w)
            if softcap is not None:
                scores = torch.tanh(scores / softcap) * softcap
            if alibi is not None:  # (B, Hq, 1, w) -> grouped like qg
                bias = alibi(positions, max(dec.prefix) + dec.blocks.shape[1] * bs, q.dtype)  # whole blocks
                scores = scores + bias.view(rows, hkv, hq // hkv, -1)
            scores = scores.masked_fill(~mask, float("-inf"))
            new_peak = torch.maximum(peak, scores.amax(dim=-1, keepdim=True))
            safe = torch.where(torch.isinf(new_peak), 0.0, new_peak)  # a tile no key of the row is in
            weights = torch.exp(scores - safe)
            keep = torch.exp(torch.where(torch.isinf(peak), float("-inf"), peak - safe))
            total = total * keep + weights.sum(dim=-1, keepdim=True)
            acc = acc * keep + torch.matmul(weights, v)
            peak = new_peak
        tiles.clear()
    return (acc / total).reshape(rows, hq, hd)


def _stream_positions(dec: Decode, first: int, width: int) -> torch.Tensor:
    """(B, width) extended positions of stream columns [first, first + width): the row's prefix m, then p."""
    m = torch.tensor(dec.prefix, dtype=torch.long, device=dec.blocks.device)[:, None]
    return m + first + torch.arange(width, device=dec.blocks.device)[None]


def _prefix_positions(dec: Decode) -> torch.Tensor:
    """(B, M) extended positions of the prefix columns (left-aligned: column c is position c)."""
    return torch.arange(max(dec.prefix), device=dec.blocks.device).expand(len(dec.prefix), -1)


def _triton_decode(
    out: torch.Tensor,
    query: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    dec: Decode,
    block_size: int,
    window: int | None,
    scale: float,
    softcap: float | None,
    alibi: Any,
) -> bool:
    """Write the decode rows' attention into `out` (1, T, Hq, hd) from the Triton kernel over their block
    tables (no gather; kernels/paged_attention.py) and return True; False when the torch path must run (not
    the Triton backend, or terms the kernel does not apply: prefix keys, ALiBi)."""
    unsupported = max(dec.prefix) > 0 or alibi is not None
    if not paged_kernel.takes_triton(
        query[0, :, 0], k_pool, unsupported=unsupported
    ):  # (Hq, hd): no copy yet
        return False
    q = query[0].transpose(0, 1)[dec.tokens]  # (B, Hq, hd)
    out[0, dec.tokens] = paged_kernel.decode_attention(
        q, k_pool, v_pool, dec.blocks, dec.lengths, block_size=block_size, scale=scale, window=window,
        softcap=softcap,
    )  # fmt: skip
    return True


def paged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Returns (1, T, Hq, hd), the layout transformers' attention functions return."""
    cell = getattr(module, MARK, None)
    cache: StepCache | None = cell[0] if cell else None
    if cache is None or cache.layer is None:
        raise RuntimeError(
            f"{type(module).__name__} called the paged attention outside a paged step (or without writing its keys "
            "to the paged cache first): this model does not run on the paged path."
        )
    layer, batch = cache.layer, cache.batch
    cache.attended += 1
    window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
    window = int(window) if window else None
    softcap = kwargs.get("softcap")
    alibi = kwargs.get("alibi")  # families.Alibi or None
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    k_pool, v_pool, bs = cache.pool.keys[layer], cache.pool.values[layer], cache.pool.block_size
    out = query.new_empty(query.shape[0], query.shape[2], query.shape[1], query.shape[3])  # (1, T, Hq, hd)
    dec: Decode | None = batch.decode
    if dec is not None and _triton_decode(out, query, k_pool, v_pool, dec, bs, window, scale, softcap, alibi):
        dec = None
    if dec is not None:
        q = query[0][:, dec.tokens].transpose(0, 1)[:, :, None]  # (B, Hq, 1, hd)
        if dec.width > KEY_TILE:
            out[0, dec.tokens] = _decode_tiled(
                q, k_pool, v_pool, dec, layer, cache, window, scale, softcap, alibi
            )
            dec = None
    if dec is not None:
        k = _gather(k_pool, dec.blocks, bs)[:, :, : dec.width]  # (B, Hkv, C, hd)
        v = _gather(v_pool, dec.blocks, bs)[:, :, : dec.width]
        k, v = _with_prefix(k, v, dec.prefix_slots, dec.prefix, layer, cache)
        bias = None
        if alibi is not None:
            positions = _stream_positions(dec, 0, dec.width)
            if max(dec.prefix):
                positions = torch.cat([_prefix_positions(dec), positions], dim=1)
            bias = alibi(positions, max(dec.prefix) + dec.width, q.dtype)  # (B, Hq, 1, M + C)
        o = _attend(q, k, v, dec.mask(window), scale, softcap, bias)  # (B, Hq, 1, hd)
        out[0, dec.tokens] = o[:, :, 0]
    chunk: Prefill
    for chunk in batch.prefills:
        span = slice(chunk.tok_start, chunk.tok_start + chunk.n)
        q = query[:, :, span]  # (1, Hq, n, hd)
        if chunk.start == 0:  # a whole stream in this step: its keys are the step's own, no gather
            k, v = key[:, :, span], value[:, :, span]
        else:
            length = chunk.start + chunk.n
            k = _gather(k_pool, chunk.blocks[None], bs)[:, :, :length]
            v = _gather(v_pool, chunk.blocks[None], bs)[:, :, :length]
        if chunk.prefix:
            k, v = _with_prefix(k, v, {chunk.slot: [0]}, [chunk.prefix], layer, cache)
        bias = None
        if (
            alibi is not None
        ):  # the row's keys [prefix m][stream 0 .. start + n - 1] are positions 0.. in order
            positions = torch.arange(k.shape[2], device=k.device)[None]
            bias = alibi(positions, k.shape[2], q.dtype)  # (1, Hq, 1, m + start + n)
        o = _attend(q, k, v, chunk.mask(window), scale, softcap, bias)  # (1, Hq, n, hd)
        out[0, span] = o[0].transpose(0, 1)
    return out, None


def register() -> None:
    """Make "swapyard_paged" known to transformers (idempotent)."""
    AttentionInterface.register(NAME, paged_attention)
