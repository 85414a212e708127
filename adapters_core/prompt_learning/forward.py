"""The forward pass of prompt-learning adapters, exactly as PEFT's `PeftModelFor*.forward` (reference §9.2, §10).

Notation: `n` virtual tokens, `L` real tokens, `B` rows, `d` the embedding width, `P` the prompt table.

* Prompt tuning / P-tuning put `P[:n]` in front of the input embeddings (virtual tokens FIRST) and prefix the
  attention mask with ones. Causal LMs, token classification, QA and feature extraction therefore return
  `n + L` positions; seq2seq prepends on the encoder side only (rows `P[n:2n]` are never used).
* Prefix tuning hands each attention layer `n` extra key/value rows and returns `L` positions.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..config import TaskType
from . import prefix_cache

# Task types whose outputs keep per-token positions and whose token_type_ids PEFT keeps (and zero-prefixes).
_KEEPS_TOKEN_TYPES = (TaskType.SEQ_CLS, TaskType.TOKEN_CLS, TaskType.QUESTION_ANS)


def batch_size_of(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> int:
    if input_ids is not None:
        return int(input_ids.shape[0])
    if inputs_embeds is None:
        raise ValueError("pass input_ids or inputs_embeds")
    return int(inputs_embeds.shape[0])


def prefix_mask(mask: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """`[ones(B, n), mask]`: the virtual positions are always attended. (B, L) -> (B, n+L)."""
    if mask is None:
        return None
    return torch.cat([mask.new_ones(mask.shape[0], n), mask], dim=1)


def _drop_or_shift_positions(kwargs: dict[str, Any], n: int, *, prefix: bool) -> None:
    """PEFT drops user `position_ids` for prompt methods and shifts them by `n` for prefix tuning."""
    if kwargs.get("position_ids") is None:
        return
    if prefix:
        kwargs["position_ids"] = kwargs["position_ids"] + n
    else:
        warnings.warn(
            "position_ids are not used with prompt tuning / P-tuning (as in PEFT); ignoring them.",
            stacklevel=3,
        )
        kwargs["position_ids"] = None


def prompt_forward(
    model: nn.Module,
    word_embeddings: nn.Module,
    task_type: TaskType,
    table: torch.Tensor,
    n: int,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    **kwargs: Any,
) -> Any:
    """Prompt tuning / P-tuning forward. table: (n·submodules, d); only `table[:n]` is ever used."""
    batch = batch_size_of(input_ids, inputs_embeds)
    _drop_or_shift_positions(kwargs, n, prefix=False)
    token_types = kwargs.get("token_type_ids")
    if token_types is not None:
        if task_type in _KEEPS_TOKEN_TYPES:  # virtual tokens are segment 0
            kwargs["token_type_ids"] = torch.cat([token_types.new_zeros(batch, n), token_types], dim=1)
        else:
            warnings.warn(
                "token_type_ids are not used with prompt learning for this task (as in PEFT).", stacklevel=2
            )
            kwargs["token_type_ids"] = None
    if inputs_embeds is None:
        inputs_embeds = word_embeddings(input_ids)  # (B, L, d)
    prompts = table[:n].to(inputs_embeds.dtype).unsqueeze(0).expand(batch, -1, -1)  # (B, n, d)
    inputs_embeds = torch.cat([prompts, inputs_embeds], dim=1)  # (B, n+L, d)
    attention_mask = prefix_mask(attention_mask, n)
    if labels is not None:
        if task_type == TaskType.CAUSAL_LM:  # no loss on the virtual tokens
            labels = torch.cat([labels.new_full((batch, n), -100), labels], dim=1)
        kwargs["labels"] = labels
    return model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)


def build_prefix_cache(
    strategy: str, table: torch.Tensor, batch: int, num_layers: int, num_heads: int
) -> Any:
    if strategy == "seq2seq":
        return prefix_cache.seq2seq_cache(table, batch, num_layers, num_heads)
    return prefix_cache.decoder_cache(table, batch, num_layers, num_heads)


def prefix_forward(
    model: nn.Module,
    strategy: str,
    injector: prefix_cache.EncoderPrefixInjector | None,
    task_type: TaskType,
    table: torch.Tensor,
    n: int,
    num_layers: int,
    num_heads: int,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    **kwargs: Any,
) -> Any:
    """Prefix tuning forward. table: (n, num_layers·2·token_dim), already in the model's dtype."""
    batch = batch_size_of(input_ids, inputs_embeds)
    kwargs.pop("past_key_values", None)  # PEFT overwrites any user cache with the prefix
    kwargs.pop("cache", None)
    _drop_or_shift_positions(kwargs, n, prefix=True)
    if kwargs.get("token_type_ids") is not None and task_type not in _KEEPS_TOKEN_TYPES:
        kwargs["token_type_ids"] = None
    cache = build_prefix_cache(strategy, table, batch, num_layers, num_heads)
    if strategy == "seq2seq":
        # The encoder is untouched; the decoder's self-attention sees the prefix, so its mask grows by n.
        kwargs["decoder_attention_mask"] = prefix_mask(kwargs.get("decoder_attention_mask"), n)
        return model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache,
            **kwargs,
        )
    attention_mask = prefix_mask(attention_mask, n)
    if strategy == "decoder":
        return model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache,
            **kwargs,
        )
    # Bidirectional encoder (BERT): real tokens take positions n..n+L-1, as they did with transformers 4 when
    # `past_key_values` was given; the first real token ([CLS]) is pooled.
    assert injector is not None
    if kwargs.get("position_ids") is None:
        length = (input_ids if input_ids is not None else inputs_embeds).shape[1]  # type: ignore[union-attr]
        device = table.device
        kwargs["position_ids"] = torch.arange(n, n + length, device=device).unsqueeze(0).expand(batch, -1)
    with injector.inject(cache):
        return model(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        )
