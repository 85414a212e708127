"""Attention of an encoder-decoder's paged step (T5, mT5, BART), registered as "swapyard_paged_s2s".

The decoder runs over the packed stream (1, T) exactly as transformers wrote it; its attention modules call this
function with the module, the query (1, H, T, hd) and the keys/values they hold:

self-attention   the step's own keys/values, already written to the pool by `StepCache.update`. Each row attends
                 causally over `[its prefix m][its stream 0 .. start + n - 1]` (kv_cache.py's blocks; prefix
                 tuning's read-only keys first), in extended positions (prefix columns 0..m-1, stream position p
                 at m + p): what the row alone has in its cache. T5's relative position bias is the row's own:
                 computed here from those positions with the first layer's bias table (`T5Bias`), once per step
                 and reused by every layer, as T5 itself shares layer 0's bias. T5's own (T, T) bias over the
                 packed stream is never built (seq2seq.py hands layer 0 a placeholder).
cross-attention  the keys the module got are the step's placeholder (`Cross.dummy`: its identity is how this
                 function tells cross- from self-attention): each row attends to its own encoder keys/values
                 (H, Le, hd) per layer, computed once at admission (seq2seq.py), no mask (its encoder output has
                 no padding). T5's cross-attention has no position bias.

One-token chunks (decode) attend as one batch: their self-attention KEY_TILE keys at a time with an online softmax
(attention.py's `_decode_tiled`, online.py; T5's bias made tile by tile), so a step's transient memory does not grow
with the decoder stream; their cross-attention over the encoder keys padded to the longest row, masked. Longer
chunks one by one. Scaling is the module's (T5: 1, BART: hd^-0.5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from .attention import MARK, _decode_tiled, _gather, _with_prefix
from .batch import Decode, Prefill
from .encoder_store import DecodeSlab
from .kv_cache import StepCache

NAME = "swapyard_paged_s2s"
KV = tuple[torch.Tensor, torch.Tensor]


class T5Bias:
    """T5's relative position bias of the decoder's self-attention (the first layer's table, shared by all)."""

    def __init__(self, module: Any) -> None:
        self.module = module
        table = module.relative_attention_bias
        self.weight: torch.Tensor = getattr(table, "base_layer", table).weight  # (buckets, H)

    def __call__(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """query (R, n), keys (R, S) extended positions -> (R, H, n, S) bias."""
        m = self.module
        relative = keys[:, None, :] - query[:, :, None]  # (R, n, S): memory - context, as compute_bias
        buckets = m._relative_position_bucket(
            relative,
            bidirectional=False,
            num_buckets=m.relative_attention_num_buckets,
            max_distance=m.relative_attention_max_distance,
        )
        return F.embedding(buckets, self.weight).permute(0, 3, 1, 2)


@dataclass
class Cross:
    """What one step's attention needs beyond the pool: per decode row / prefill chunk (batch.py's order) its
    encoder keys/values per layer, the cross-attention placeholder, T5's bias (None for BART)."""

    dummy: torch.Tensor
    decode: DecodeSlab | None  # the decode rows' keys/values, padded (encoder_store.py)
    prefill: list[list[KV]]  # prefill chunk -> per layer (K, V)
    bias: T5Bias | None
    attended: int = 0  # cross-attention calls (the support probe counts them)
    _masks: dict[Any, torch.Tensor | None] = field(default_factory=dict)


def _float_mask(visible: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """visible (R, 1, n, S) bool, bias (R, H, n, S) or None -> additive mask: bias where visible, -inf elsewhere."""
    base = (
        bias.to(dtype) if bias is not None else torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    )
    return base.masked_fill(~visible, float("-inf"))


def _decode_bias(
    dec: Decode, cross: Cross
) -> Callable[[torch.Tensor, int, torch.dtype], torch.Tensor] | None:
    """T5's bias as attention.py's `_decode_tiled` takes ALiBi's: (extended key positions (B, S), bound, dtype)
    -> (B, H, 1, S), computed tile by tile (never the whole (B, H, 1, M + C) at once); None for BART."""
    bias = cross.bias
    if bias is None:
        return None
    query = dec.prefix_column() + dec.lengths[:, None] - 1  # (B, 1) extended position of each row's query

    def per_tile(keys: torch.Tensor, bound: int, dtype: torch.dtype) -> torch.Tensor:
        return bias(query, keys).to(dtype)

    return per_tile


def _prefill_mask(chunk: Prefill, index: int, cross: Cross, dtype: torch.dtype) -> torch.Tensor:
    """(1, H or 1, n, m + start + n) additive mask: causal in extended positions, T5's bias."""
    key = ("prefill", index, dtype)
    if key not in cross._masks:
        device = chunk.blocks.device
        query = chunk.prefix + chunk.start + torch.arange(chunk.n, device=device)  # (n,)
        keys = torch.arange(chunk.prefix + chunk.start + chunk.n, device=device)  # (S,)
        visible = keys[None, :] <= query[:, None]
        bias = cross.bias(query[None], keys[None]) if cross.bias is not None else None
        cross._masks[key] = _float_mask(visible[None, None], bias, dtype)
    return cross._masks[key]  # type: ignore[return-value]


def _self_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cache: StepCache, scale: float
) -> torch.Tensor:
    """(1, H, T, hd) query over each row's own cached stream -> (1, T, H, hd)."""
    batch, cross = cache.batch, cache.batch.extras["s2s"]
    layer = cache.layer
    assert layer is not None
    cache.attended += 1
    k_pool, v_pool, bs = cache.pool.keys[layer], cache.pool.values[layer], cache.pool.block_size
    out = query.new_empty(query.shape[0], query.shape[2], query.shape[1], query.shape[3])
    dec = batch.decode
    if dec is not None:
        q = query[0][:, dec.tokens].transpose(0, 1)[:, :, None]  # (B, H, 1, hd)
        # KEY_TILE keys at a time (online.py): the step's transient memory does not grow with the decoder stream
        bias = _decode_bias(dec, cross)
        out[0, dec.tokens] = _decode_tiled(q, k_pool, v_pool, dec, layer, cache, None, scale, None, bias)
    for index, chunk in enumerate(batch.prefills):
        span = slice(chunk.tok_start, chunk.tok_start + chunk.n)
        q = query[:, :, span]  # (1, H, n, hd)
        if chunk.start == 0:  # the whole stream is this step's: its keys are the step's own
            k, v = key[:, :, span], value[:, :, span]
        else:
            length = chunk.start + chunk.n
            k = _gather(k_pool, chunk.blocks[None], bs)[:, :, :length]
            v = _gather(v_pool, chunk.blocks[None], bs)[:, :, :length]
        if chunk.prefix:
            k, v = _with_prefix(k, v, {chunk.slot: [0]}, [chunk.prefix], layer, cache)
        mask = _prefill_mask(chunk, index, cross, q.dtype)
        out[0, span] = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)[0].transpose(0, 1)
    return out


def _cross_attention(query: torch.Tensor, layer: int, cross: Cross, batch: Any, scale: float) -> torch.Tensor:
    """(1, H, T, hd) query over each row's own encoder keys/values -> (1, T, H, hd)."""
    cross.attended += 1
    out = query.new_empty(query.shape[0], query.shape[2], query.shape[1], query.shape[3])
    dec = batch.decode
    if dec is not None:
        assert cross.decode is not None
        q = query[0][:, dec.tokens].transpose(0, 1)[:, :, None]  # (B, H, 1, hd)
        k, v = cross.decode.layers[layer]  # (B, H, Le_max, hd)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=cross.decode.mask, scale=scale)
        out[0, dec.tokens] = o[:, :, 0]
    for chunk, row in zip(batch.prefills, cross.prefill):
        span = slice(chunk.tok_start, chunk.tok_start + chunk.n)
        kr, vr = row[layer]
        o = F.scaled_dot_product_attention(query[:, :, span], kr[None], vr[None], scale=scale)
        out[0, span] = o[0].transpose(0, 1)
    return out


def paged_s2s_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Returns (1, T, H, hd), the layout transformers' attention functions return."""
    cell = getattr(module, MARK, None)
    cache: StepCache | None = cell[0] if cell else None
    cross: Cross | None = cache.batch.extras.get("s2s") if cache is not None else None
    if cache is None or cross is None:
        raise RuntimeError(
            f"{type(module).__name__} called the encoder-decoder paged attention outside a paged step: this model "
            "does not run on the paged path."
        )
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    if key is cross.dummy:
        layer = getattr(module, "layer_idx", None)
        if layer is None:
            raise RuntimeError(f"{type(module).__name__} has no layer_idx: its encoder keys cannot be found.")
        return _cross_attention(query, int(layer), cross, cache.batch, scale), None
    if cache.layer is None:
        raise RuntimeError(
            f"{type(module).__name__} attended without writing its keys to the paged cache first: this model "
            "does not run on the paged path."
        )
    return _self_attention(query, key, value, cache, scale), None


def register() -> None:
    """Make "swapyard_paged_s2s" known to transformers (idempotent)."""
    AttentionInterface.register(NAME, paged_s2s_attention)
