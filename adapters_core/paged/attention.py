"""Paged attention: each row attends over its own blocks of the pool (kv_cache.py), registered with
transformers' `AttentionInterface` as "swapyard_paged" so every model whose attention calls `cache.update`
and then the attention interface runs on it unchanged.

Per layer call: `query` (1, Hq, T, hd) of the packed stream; the keys and values of this step are already in
the pool (`StepCache.update`). One-token chunks (decode) attend as one batch, KEY_TILE keys at a time with an online
softmax (online.py): a step's transient memory is one tile's, whatever the context. Longer chunks (prefill) attend one by one over their gathered
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
from .online import Online, gather_heads, one_tile

NAME = "swapyard_paged"
# Keys per tile of the decode attention (online softmax, online.py): a step's transient gather is rows × KEY_TILE
# keys of one layer whatever the context length.
KEY_TILE = 256
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
    return gather_heads(pool, blocks, block_size).transpose(0, 1)


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
    """Decode attention over KEY_TILE keys at a time (online.py): the prefix tile first, then the stream's blocks.
    q (B, Hq, 1, hd) -> (B, Hq, hd). No tile outlives its `add`, so the step's transient memory is one tile's."""
    bs = cache.pool.block_size
    m = max(dec.prefix)
    per_tile = max(1, KEY_TILE // bs)
    nb = dec.blocks.shape[1]
    if nb <= per_tile and not m and softcap is None and alibi is None:
        return one_tile(q, k_pool, v_pool, dec.blocks, bs, dec.hidden(window, 0, nb * bs), scale)
    state = Online(q, k_pool.shape[0], scale, softcap)
    bound = m + dec.blocks.shape[1] * bs  # extended positions of whole blocks stay below it (ALiBi's table)
    if m:
        pk, pv = _prefix_tile(dec, layer, cache, k_pool)
        bias = alibi(_prefix_positions(dec), bound, q.dtype) if alibi is not None else None
        state.add_keys(pk, pv, dec.prefix_hidden(window), bias)
        del pk, pv
    for first in range(0, nb, per_tile):
        blocks = dec.blocks[:, first : first + per_tile]
        at, width = first * bs, blocks.shape[1] * bs
        bias = alibi(_stream_positions(dec, at, width), bound, q.dtype) if alibi is not None else None
        state.add(k_pool, v_pool, blocks, bs, dec.hidden(window, at, width), bias)
    return state.result(q.dtype)


def _prefix_tile(
    dec: Decode, layer: int, cache: StepCache, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Hkv, B, M, hd) keys and values of each row's prefix, left-aligned (zeros past a row's m)."""
    heads, _, hd = like.shape
    shape = (heads, len(dec.prefix), max(dec.prefix), hd)
    pk, pv = like.new_zeros(shape), like.new_zeros(shape)
    for slot, rows in dec.prefix_slots.items():
        k, v = cache.batch.extras["prefix"][slot][layer]  # (Hkv, m, hd)
        pk[:, rows, : k.shape[1]] = k[:, None]
        pv[:, rows, : v.shape[1]] = v[:, None]
    return pk, pv


def _stream_positions(dec: Decode, first: int, width: int) -> torch.Tensor:
    """(B, width) extended positions of stream columns [first, first + width): the row's prefix m, then p."""
    return dec.prefix_column() + first + torch.arange(width, device=dec.blocks.device)[None]


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
        out[0, dec.tokens] = _decode_tiled(
            q, k_pool, v_pool, dec, layer, cache, window, scale, softcap, alibi
        )
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
