"""Sentence embeddings from a MultiAdapterModel: each row's last hidden states under its own adapter, pooled.

Semantics (per row r, over its real tokens only: padding never counts, and prompt-tuning virtual tokens are
cut away by the forward, multi/prompt_layout.py):

    h = last hidden states (L, d): `hidden_states[-1]` of an encoder or a causal LM (after the final norm),
        `encoder_last_hidden_state` of an encoder-decoder (T5)
    cls  : h[first real position]                    (BERT's [CLS]; not BERT's pooler dense + tanh)
    last : h[last real position]                     (decoder embedders: the token that has seen the whole text)
    mean : sum(h[real positions]) / number of real positions

Which one is the default follows the base: `cls` for encoders, `last` for causal LMs, `mean` for encoder-decoders
(Sentence-T5); a caller may ask for another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch

from .steps import decoder_start, pad_rows

Pooling = Literal["cls", "mean", "last"]
POOLINGS: tuple[str, ...] = get_args(Pooling)
DEFAULT_POOLING: dict[str, Pooling] = {"encoder": "cls", "causal": "last", "seq2seq": "mean"}


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: Pooling) -> torch.Tensor:
    """Pool hidden states (B, L, d) over each row's real positions, mask (B, L) of 0/1 (either padding side):
    returns (B, d). See the module docstring for the three rules."""
    if how not in POOLINGS:
        raise ValueError(f"pooling {how!r} is not one of {list(POOLINGS)}")
    mask = mask.to(hidden.device)
    length = mask.shape[1]
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if how == "cls":
        return hidden[rows, mask.argmax(dim=1)]  # argmax: the first 1 of each row
    if how == "last":
        return hidden[rows, length - 1 - mask.flip(1).argmax(dim=1)]
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1)


@torch.no_grad()
def embed_rows(
    model: Any,
    kind: str,
    input_ids: Sequence[Sequence[int]],
    adapter_names: Sequence[str | None],
    how: Pooling,
) -> torch.Tensor:
    """(N, d) pooled last hidden states of `input_ids`, row i under `adapter_names[i]`, in one forward of
    `model` (a MultiAdapterModel whose base is of `kind`: encoder, causal or seq2seq)."""
    if not input_ids or any(len(r) == 0 for r in input_ids):
        raise ValueError("embed() needs at least one row, and at least one token in every row.")
    device = next(model.parameters()).device
    ids, mask = pad_rows(input_ids, left=kind == "causal", device=device)
    extra: dict[str, Any] = {}
    if kind == "seq2seq":  # one decoder step: the encoder's states are what is pooled
        extra["decoder_input_ids"] = torch.full(
            (len(input_ids), 1), decoder_start(model.model), device=device
        )
    out = model(
        input_ids=ids, attention_mask=mask, adapter_names=adapter_names, output_hidden_states=True, **extra
    )
    hidden = out.encoder_last_hidden_state if kind == "seq2seq" else out.hidden_states[-1]  # (N, L, d)
    return pool(hidden, mask, how)
