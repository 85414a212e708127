"""Sliding-window attention for rows whose tokens do not sit in consecutive cache columns.

A mixed batch leaves gaps inside a row (prompts.py layout: `[pad][prefix m][pad][virtual v][own pads][real …]`). A full-attention layer does not mind: keys are masked or
not, and order is all that counts. A sliding-window layer (Mistral, Gemma 2, Gemma 3) does: transformers
measures the window in cache columns, so a gap would push keys out of the window that the row alone attends
to. Here the window is measured in each row's own token positions instead — the rank of a column among the
row's attended columns — which is exactly what the row alone sees, in PEFT or in transformers:

    key k is visible to query q  ⇔  k and q are the row's columns, k ≤ q, and rank(q) − rank(k) < window

The masks are built by transformers' own `create_causal_mask` (so they have the format of the model's attention
implementation) with that rule as an extra condition, and handed to the model as its `attention_mask`: a dict by
layer type for models that mix layer types, else the single 4D mask. Caches must then keep every column (plain
`DynamicLayer`s, never a sliding-window layer that drops columns by index).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers.masking_utils import create_causal_mask


def sliding_window(config: Any) -> int | None:
    """The model's sliding window when some layer uses one, else None."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if window is None or (layer_types is not None and "sliding_attention" not in layer_types):
        return None
    return int(window)


def _within(rank: torch.Tensor, window: int) -> Callable[..., torch.Tensor]:
    def mask_function(batch_idx: Any, head_idx: Any, q_idx: Any, kv_idx: Any) -> torch.Tensor:
        return rank[batch_idx, q_idx] - rank[batch_idx, kv_idx] < window

    return mask_function


def attention_masks(model: Any, mask: torch.Tensor, q_len: int, cache: Any) -> Any:
    """What to pass as `attention_mask` for the last `q_len` columns of `mask` (B, K), 1 = the row's column.

    `cache` is the cache before this forward (None without one). Returns `mask` itself for models without a
    sliding window; else the model's masks under the rule of the module docstring.
    """
    config = model.config
    window = sliding_window(config)
    if window is None:
        return mask
    rank = mask.long().cumsum(dim=1) - 1  # (B, K): each column's position among the row's own columns
    shape = torch.empty(
        mask.shape[0], q_len, 0, dtype=model.dtype, device=mask.device
    )  # sizes and dtype only
    common = {"config": config, "inputs_embeds": shape, "attention_mask": mask, "cache": cache}
    masks = {
        "full_attention": create_causal_mask(**common),
        "sliding_attention": create_causal_mask(**common, and_mask_function=_within(rank, window)),
    }
    layer_types = set(getattr(config, "layer_types", None) or ["sliding_attention"])
    if not layer_types <= set(masks):
        raise NotImplementedError(
            f"{type(model).__name__} has attention layers of types {sorted(layer_types - set(masks))}; rows with "
            "virtual tokens, prefixes or joined caches are served for full and sliding-window attention only."
        )
    if len(layer_types) == 1:
        return masks[layer_types.pop()]
    return {kind: masks[kind] for kind in layer_types}
