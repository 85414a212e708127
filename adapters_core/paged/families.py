"""Per-family attention adapters: families whose attention computes its scores itself instead of calling
transformers' attention interface (BLOOM, Falcon) run their projections exactly as transformers wrote them and
hand the attention to the paged one (attention.py), with their ALiBi biases where they have them.

During a paged step (`adapted`) each such attention module's `forward` is swapped for its adapter; outside a
step the module is untouched. An adapter only re-routes: the fused QKV projection (a multi-adapter layer, so
LoRA/IA3 apply per token), the module's own head split, rotary embeddings and output projection are the
family's; what changes is that keys are written with `cache.update` and attention reads the paged pool.

ALiBi: the family's own `build_alibi_tensor` gives, per head, the bias of each key position (BLOOM adds it to
the scaled scores; Falcon adds it before scaling and rounds it through bfloat16, which the family function
reproduces exactly). The bias depends on the key's position only: the row alone sees the same values up to a
per-query constant, which softmax ignores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.bloom import modeling_bloom
from transformers.models.falcon import modeling_falcon

from . import attention


class Alibi:
    """Bias of key positions per head from the family's `build(mask, heads, dtype) -> (heads, 1, P)`, divided by
    `divisor`. Called with extended key positions (R, S) long, all below `length` (a host int: no device sync),
    returns (R, heads, 1, S) in `dtype`. One per model, shared by its layers."""

    def __init__(self, build: Callable[..., torch.Tensor], heads: int, divisor: float) -> None:
        self.build, self.heads, self.divisor = build, heads, divisor
        self.table: torch.Tensor | None = None  # (heads, P): bias of positions 0..P-1, grown on demand

    def __call__(self, positions: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
        table = self.table
        if (
            table is None
            or table.shape[1] < length
            or table.dtype != dtype
            or table.device != positions.device
        ):
            size = max(length, 2 * table.shape[1] if table is not None else 0)
            ones = torch.ones(1, size, dtype=torch.long, device=positions.device)
            table = self.build(ones, self.heads, dtype)[:, 0]  # (heads, size)
            self.table = table = table / self.divisor if self.divisor != 1.0 else table
        return table[:, positions].transpose(0, 1)[:, :, None]  # (R, heads, 1, S)


def _bloom_forward(
    self: Any,
    hidden_states: torch.Tensor,
    residual: torch.Tensor,
    alibi: torch.Tensor,
    attention_mask: Any,
    layer_past: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """BloomAttention.forward over the paged pool. hidden_states (1, T, d) -> (1, T, d)."""
    _, tokens, _ = hidden_states.shape
    query, key, value = self._reshape(self.query_key_value(hidden_states))  # each (1, H, T, hd)
    key, value = layer_past.update(key, value, self.layer_idx)
    bias = getattr(self, _ALIBI_ATTR)
    out, _ = attention.paged_attention(
        self, query, key, value, None, scaling=self.inv_norm_factor, alibi=bias
    )
    context = out.reshape(1, tokens, self.num_heads * self.head_dim)  # out: (1, T, H, hd)
    if self.pretraining_tp > 1 and self.slow_but_exact:  # as BloomAttention: slice by slice, without the bias
        step = self.hidden_size / self.pretraining_tp
        out = torch.zeros_like(context)
        for i in range(self.pretraining_tp):
            cols = slice(int(i * step), int((i + 1) * step))
            out = out + F.linear(context[:, :, cols], self.dense.weight[:, cols])
    else:
        out = self.dense(context)
    return modeling_bloom.dropout_add(out, residual, self.hidden_dropout, self.training), None


def _falcon_forward(
    self: Any,
    hidden_states: torch.Tensor,
    alibi: torch.Tensor | None,
    attention_mask: Any,
    position_ids: Any = None,
    layer_past: Any = None,
    use_cache: bool = False,
    output_attentions: bool = False,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """FalconAttention.forward over the paged pool (ALiBi or rotary). hidden_states (1, T, d) -> (1, T, d)."""
    _, tokens, _ = hidden_states.shape
    heads, width = self.num_heads, self.head_dim
    kv_heads = heads if self.new_decoder_architecture else self.num_kv_heads
    query, key, value = self._split_heads(self.query_key_value(hidden_states))  # (1, T, heads, hd)
    query = query.transpose(1, 2).reshape(1, heads, tokens, width)
    key = key.transpose(1, 2).reshape(1, kv_heads, tokens, width)
    value = value.transpose(1, 2).reshape(1, kv_heads, tokens, width)
    if alibi is None:
        assert position_embeddings is not None
        cos, sin = position_embeddings
        query, key = modeling_falcon.apply_rotary_pos_emb(query, key, cos, sin)
    key, value = layer_past.update(key, value, self.layer_idx)
    bias = getattr(self, _ALIBI_ATTR) if alibi is not None else None
    out, _ = attention.paged_attention(
        self, query, key, value, None, scaling=self.inv_norm_factor, alibi=bias
    )
    return self.dense(out.reshape(1, tokens, heads * width)), None


_ALIBI_ATTR = "_swapyard_alibi"
# attention class name -> (its paged forward, the family's ALiBi builder)
_ADAPTERS: dict[str, tuple[Callable[..., Any], Callable[..., torch.Tensor]]] = {
    "BloomAttention": (_bloom_forward, modeling_bloom.build_alibi_tensor),
    "FalconAttention": (_falcon_forward, modeling_falcon.build_alibi_tensor),
}


def adapted_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The attention modules of `model` that run through an adapter here (none for most families)."""
    return [m for m in model.modules() if type(m).__name__ in _ADAPTERS]


@contextmanager
def adapted(modules: list[torch.nn.Module]) -> Iterator[None]:
    """Each module's `forward` is its family's paged adapter for the duration (the class's forward after)."""
    shared: dict[tuple[str, int, float], Alibi] = {}
    for module in modules:
        name = type(module).__name__
        forward, build = _ADAPTERS[name]
        if not hasattr(module, _ALIBI_ATTR):
            # BLOOM adds the bias to the scaled scores (its beta is 1); Falcon to the unscaled ones, so its
            # bias is divided by √hd as FalconModel divides it into the mask.
            heads = int(module.num_heads)  # type: ignore[arg-type]
            divisor = math.sqrt(int(module.head_dim)) if name == "FalconAttention" else 1.0  # type: ignore[arg-type]
            key = (name, heads, divisor)
            setattr(module, _ALIBI_ATTR, shared.setdefault(key, Alibi(build, heads, divisor)))
        module.forward = MethodType(forward, module)
    try:
        yield
    finally:
        for module in modules:
            del module.forward
