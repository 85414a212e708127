"""Prefill and decode steps of a mixed batch: the one decoding loop of MultiAdapterModel.

`prefill` lays the rows out with prompt_layout.py (every row's virtual tokens and prefix enter here, once) and
runs one forward with a fresh cache; `decode` feeds one token per row: one forward of (B, 1) tokens with the
cache, the rows' own next positions and the cache mask grown by one column. Both expect the state's
`RowContext` to be the model's current one (MultiAdapterModel installs it) and return (B, V) logits of each
row's last position. `generate` (prompt_run.py) and the serving engine (`MultiAdapterModel.prefill/decode`)
both run these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutput

from .context import RowContext
from .masks import attention_masks
from .prompt_layout import plan_batch, prefix_cache
from .prompts import PromptStore
from .steps import DecodeState


def pad_rows(
    rows: Sequence[Sequence[int]], *, left: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists of different lengths -> ids (B, L) padded with 0 and mask (B, L), pads on the left or right."""
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(length - len(r), length) if left else slice(0, len(r))
        ids[i, cols] = torch.as_tensor(r, dtype=torch.long)
        mask[i, cols] = 1
    return ids.to(device), mask.to(device)


def decoder_start(model: Any) -> int:
    """The token every T5 decoder row starts from."""
    start = model.generation_config.decoder_start_token_id
    return int(model.config.decoder_start_token_id if start is None else start)


@torch.no_grad()
def prefill(
    store: PromptStore,
    ctx: RowContext,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    adapters: tuple[Any, ...] = (),
    epoch: int = 0,
) -> tuple[torch.Tensor, DecodeState]:
    """Run padded prompts (B, L) — left-padded for causal LMs, right-padded for T5 — under `ctx`.

    Returns (B, V) logits of each row's last real position (T5: of the first decoder step from
    `decoder_start_token_id`) and the state after it. `adapters`/`epoch` are recorded in the state.
    """
    batch = plan_batch(store, ctx.row_slots, input_ids=input_ids, attention_mask=attention_mask)
    first: dict[str, Any] = (
        {"inputs_embeds": batch.inputs_embeds}
        if batch.inputs_embeds is not None
        else {"input_ids": input_ids}
    )
    cache = prefix_cache(store, batch, for_generation=True)
    adapters = adapters or (None,) * len(ctx.row_slots)
    model = store.model
    ctx.prompt = batch
    try:
        if store.kind == "seq2seq":
            encoder = model.get_encoder()(**first, attention_mask=batch.attention_mask, return_dict=True)
            rows = batch.attention_mask.shape[0]
            ids = torch.full((rows, 1), decoder_start(model), dtype=torch.long, device=input_ids.device)
            mask = torch.cat([batch.prefix_mask, batch.prefix_mask.new_ones(rows, 1)], dim=1)  # (B, M+1)
            ctx.position_offset = -(batch.prefix_mask == 0).sum(dim=1)  # BART numbers from the cache length
            out = model(
                encoder_outputs=encoder,
                attention_mask=batch.attention_mask,
                decoder_input_ids=ids,
                decoder_attention_mask=mask,
                cache=cache,
                use_cache=True,
            )
            state = DecodeState(
                ctx=ctx,
                adapters=adapters,
                epoch=epoch,
                cache=out.cache,
                mask=mask,
                next_position=batch.prefix_mask.sum(dim=1) + 1,
                encoder_hidden=encoder.last_hidden_state,
                encoder_mask=batch.attention_mask,
            )
            return out.logits[:, -1], state
        if batch.position_ids is not None:
            first["position_ids"] = batch.position_ids
        # Left padding puts every row's last real token in the last column: the LM head runs there only.
        masks = attention_masks(
            model, batch.attention_mask, batch.attention_mask.shape[1] - batch.n_prefix, cache
        )
        out = model(**first, attention_mask=masks, cache=cache, use_cache=True, logits_to_keep=1)
    finally:
        ctx.prompt = None  # the layout (and its prefix tensors) is not needed after prefill
    state = DecodeState(
        ctx=ctx,
        adapters=adapters,
        epoch=epoch,
        cache=out.cache,
        mask=batch.attention_mask,
        next_position=batch.next_position,
    )
    return out.logits[:, -1], state


@torch.no_grad()
def decode(store: PromptStore, state: DecodeState, tokens: torch.Tensor) -> tuple[torch.Tensor, DecodeState]:
    """Feed `tokens` (B,) — one per row — and return (B, V) logits of the next token and the next state.

    Consumes `state`: its cache object grows in place and now belongs to the returned state.
    """
    state.check_usable()
    if tokens.shape != (state.rows,):
        raise ValueError(
            f"decode() needs one token per row, shape ({state.rows},); got {tuple(tokens.shape)}"
        )
    ids = tokens.to(device=state.mask.device, dtype=torch.long)[:, None]  # (B, 1)
    mask = torch.cat([state.mask, state.mask.new_ones(state.rows, 1)], dim=1)  # (B, S+1)
    state.spent = True  # from here on its cache grows: never reuse it, even if the forward fails half-way
    if state.is_seq2seq:
        state.ctx.position_offset = -(state.mask == 0).sum(dim=1)  # left-padded cache columns (prefix, joins)
        out = store.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=state.encoder_hidden),
            attention_mask=state.encoder_mask,
            decoder_input_ids=ids,
            decoder_attention_mask=mask,
            cache=state.cache,
            use_cache=True,
        )
    else:
        positions = {"position_ids": state.next_position[:, None]} if store.takes_positions else {}
        masks = attention_masks(store.model, mask, 1, state.cache)
        out = store.model(input_ids=ids, attention_mask=masks, cache=state.cache, use_cache=True, **positions)
    return out.logits[:, -1], replace(
        state, cache=out.cache, mask=mask, next_position=state.next_position + 1, spent=False
    )
