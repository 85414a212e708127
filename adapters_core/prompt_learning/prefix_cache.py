"""Prefix tuning's key/value prefix: from the saved table to a transformers-5 cache (reference §10.2).

The table `P` is `(n, num_layers · 2 · token_dim)`. Viewed as `(n, 2L, H, hd)` (H = key/value heads under
GQA), slice `2l` is layer `l`'s keys and `2l+1` its values, used as stored (no RoPE: a cache holds post-RoPE
keys). How the prefix reaches the attention depends on the architecture:

* decoder-only (Llama, GPT-2, …): a `DynamicCache` passed as `cache=`; the model offsets positions by `n`.
* encoder-decoder (T5): an `EncoderDecoderCache` whose self-attention part holds the prefix with PEFT's
  duplicate-then-split layer order and whose cross-attention part is empty.
* bidirectional encoders (BERT): transformers 5 only hands a cache to the layers of decoders, so the prefix is
  given to each self-attention module by a forward pre-hook (see `EncoderPrefixInjector`).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache

from ..errors import UnsupportedError


def prefix_kv(table: torch.Tensor, batch_size: int, num_layers: int, num_heads: int, pairs: int) -> list:
    """Split a prefix table into per-layer key/value tensors, exactly as PEFT's `get_prompt` does.

    table: (n, num_layers·2·token_dim). pairs: 1 for decoder-only/encoder models, 2 for seq2seq, where PEFT
    duplicates the table along the layer axis before splitting into chunks of 4 — so decoder layer `l` gets
    slices `(4l mod 2L, (4l+1) mod 2L)` (reference §10.2 quirk), reproduced here on purpose.
    Returns `num_layers` tuples of `2·pairs` tensors, each (B, H, n, hd).
    """
    n = table.shape[0]
    head_dim = table.shape[1] // (num_layers * 2 * num_heads)
    kv = table.view(n, num_layers * 2, num_heads, head_dim)  # (n, 2L, H, hd)
    if pairs == 2:
        kv = torch.cat([kv, kv], dim=1)  # (n, 4L, H, hd)
    kv = kv.permute(1, 2, 0, 3).unsqueeze(1).expand(-1, batch_size, -1, -1, -1)  # (2L·pairs, B, H, n, hd)
    chunks = kv.split(2 * pairs)  # one chunk per layer
    return [tuple(chunk.unbind(0)) for chunk in chunks]


def decoder_cache(table: torch.Tensor, batch_size: int, num_layers: int, num_heads: int) -> DynamicCache:
    """Fresh `DynamicCache` holding the prefix (a cache is mutated by the forward, so build one per call)."""
    return DynamicCache([(k, v) for k, v in prefix_kv(table, batch_size, num_layers, num_heads, pairs=1)])


def seq2seq_cache(
    table: torch.Tensor, batch_size: int, num_layers: int, num_heads: int
) -> EncoderDecoderCache:
    """`EncoderDecoderCache` with the prefix in decoder self-attention only; cross-attention stays empty."""
    self_attention = DynamicCache(
        [c[:2] for c in prefix_kv(table, batch_size, num_layers, num_heads, pairs=2)]
    )
    return EncoderDecoderCache(self_attention, DynamicCache())


def self_attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Self-attention modules that can take a KV cache: transformers marks them with `layer_idx`/`is_causal`
    and their forward accepts `cache`; cross-attention modules are left out."""
    found = []
    for name, module in model.named_modules():
        if not hasattr(module, "layer_idx") or not hasattr(module, "is_causal"):
            continue
        if getattr(module, "is_cross_attention", False) or "crossattention" in name.lower():
            continue
        params = inspect.signature(module.forward).parameters
        if "cache" in params or "past_key_values" in params:
            found.append((name, module))
    return found


def prefix_strategy(model: nn.Module) -> str:
    """ "seq2seq", "decoder" or "encoder": how a prefix is handed to this model (module docstring).

    Raises `UnsupportedError` for a model whose attention cannot take a KV cache.
    """
    if getattr(model.config, "is_encoder_decoder", False):
        return "seq2seq"
    modules = self_attention_modules(model)
    if not modules:
        raise UnsupportedError(
            f"prefix tuning needs a model with a KV cache, and {type(model).__name__} "
            f"(model_type {getattr(model.config, 'model_type', '?')!r}) has no attention module that accepts one. "
            "Use prompt tuning or P-tuning (virtual tokens in the input) for this model, or LoRA."
        )
    return "decoder" if all(m.is_causal for _, m in modules) else "encoder"


class EncoderPrefixInjector:
    """Gives each self-attention module of a bidirectional encoder its layer's prefix, for one forward.

    BERT's `BertSelfAttention` appends whatever its `cache` holds in front of its keys/values, but `BertModel`
    passes a cache down only for decoders; a pre-hook supplies it. This is the semantics PEFT had with
    transformers 4 (where `past_key_values` reached every layer) and lost with transformers 5 (reference §10).
    """

    def __init__(self, model: nn.Module) -> None:
        self.modules = [m for _, m in self_attention_modules(model)]

    @contextmanager
    def inject(self, cache: DynamicCache) -> Iterator[None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            kwargs["cache"] = cache
            return args, kwargs

        handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in self.modules]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
