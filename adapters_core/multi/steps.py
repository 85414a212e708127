"""The decoding loop of `MultiAdapterModel.generate` for batches with prompt-family rows (`run_generate`): one
`prefill` of the padded prompts, then one `decode` per new token over a `DecodeState`. (The serving engine does
not run these: it runs the paged core, adapters_core/paged/.)

B rows, S cache columns, per attention layer H heads of width hd. Every row keeps its own column layout:

    causal LM, row r:   mask  [0 … 0][prefix m][0 … 0][virtual v][prompt with own left pads][generated …]
                        keys  (B, H, S, hd) in the same columns; columns where mask == 0 are never attended
    T5 decoder, row r:  mask  [0 … 0][prefix m][decoder_start][generated …]       (self-attention cache)
                        encoder_hidden (B, Le, d), encoder_mask (B, Le): [virtual v][prompt][0 … 0]
                        cross-attention keys (B, H, Le, hd), in the encoder's columns

What a row attends to is its own columns only: its positions are its own (`next_position`, not the column
index), T5's relative bias sees the same key-query distances (left padding shifts every column of a row, which
changes no distance) and the encoder side is right-padded, where the cross-attention mask hides it. That is why
a row's tokens do not depend on which rows it shares a batch with.

The steps: `prefill` lays the rows out with prompt_layout.py (every row's virtual tokens and prefix enter here,
once) and runs one forward with a fresh cache; `decode` feeds one token per row: one forward of (B, 1) tokens
with the cache, the rows' own next positions and the cache mask grown by one column. Both expect the state's
`RowContext` to be the model's current one (MultiAdapterModel installs it) and return (B, V) logits of each
row's last position; `run_generate` drives them with the one decoding loop of prompt_learning/generation.py.
`pad_rows` and `decoder_start` also serve classification, embeddings and the paged encoder-decoder path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from ..prompt_learning.generation import decode_loop, decode_options
from .context import RowContext
from .masks import attention_masks
from .prompt_layout import plan_batch, prefix_cache
from .prompts import PromptStore

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values: (B, H, S, hd) each


@dataclass(eq=False)
class DecodeState:
    """The decoding state of `run_generate`'s batch (module docstring for the column layout).

    ctx:            the rows' slots (`ctx.row_slots[i]`, -1 = base) and their cached kernel metadata.
    cache:          `DynamicCache` (causal) or `EncoderDecoderCache` (T5); it grows in place at every `decode`.
    mask:           (B, S) int64, 1 where the cache column holds one of the row's keys.
    next_position:  (B,) int64, position id of each row's next token (causal LMs; T5 counts decoder tokens).
    encoder_hidden: (B, Le, d) and encoder_mask (B, Le) for T5, else None.
    """

    ctx: RowContext
    cache: DynamicCache | EncoderDecoderCache
    mask: torch.Tensor
    next_position: torch.Tensor
    encoder_hidden: torch.Tensor | None = None
    encoder_mask: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return len(self.ctx.row_slots)

    @property
    def is_seq2seq(self) -> bool:
        return self.encoder_hidden is not None


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
) -> tuple[torch.Tensor, DecodeState]:
    """Run padded prompts (B, L) — left-padded for causal LMs, right-padded for T5 — under `ctx`.

    Returns (B, V) logits of each row's last real position (T5: of the first decoder step from
    `decoder_start_token_id`) and the state after it.
    """
    batch = plan_batch(store, ctx.row_slots, input_ids=input_ids, attention_mask=attention_mask)
    first: dict[str, Any] = (
        {"inputs_embeds": batch.inputs_embeds}
        if batch.inputs_embeds is not None
        else {"input_ids": input_ids}
    )
    cache = prefix_cache(store, batch, for_generation=True)
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
    if tokens.shape != (state.rows,):
        raise ValueError(
            f"decode() needs one token per row, shape ({state.rows},); got {tuple(tokens.shape)}"
        )
    ids = tokens.to(device=state.mask.device, dtype=torch.long)[:, None]  # (B, 1)
    mask = torch.cat([state.mask, state.mask.new_ones(state.rows, 1)], dim=1)  # (B, S+1)
    if state.is_seq2seq:
        state.ctx.position_offset = -(state.mask == 0).sum(dim=1)  # left-padded cache columns (prefixes)
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
        state, cache=out.cache, mask=mask, next_position=state.next_position + 1
    )


@torch.no_grad()
def run_generate(store: PromptStore, ctx: RowContext, kwargs: dict[str, Any]) -> torch.Tensor:
    """Decode every row under its own adapter; returns (B, L + new) for causal LMs, (B, 1 + new) for T5.

    The loop is `prefill` then one `decode` per new token (the serving engine's steps)."""
    model = store.model
    kwargs = dict(kwargs)
    input_ids = kwargs.pop("input_ids", None)
    if input_ids is None:
        input_ids = kwargs.pop("inputs", None)
    if input_ids is None:
        raise ValueError("generate() needs input_ids")
    mask = kwargs.pop("attention_mask", None)
    if mask is None:
        mask = torch.ones_like(input_ids)
    if store.kind == "encoder":
        raise ValueError(
            f"{type(model).__name__} is not a generative model; call the model instead of generate()."
        )
    opts = decode_options(model, input_ids.shape[1], kwargs)
    logits, state = prefill(store, ctx, input_ids, mask)
    if store.kind == "seq2seq":
        start = decoder_start(model)
        input_ids = torch.full((input_ids.shape[0], 1), start, dtype=torch.long, device=input_ids.device)
    box = [state]

    def step(tokens: torch.Tensor) -> torch.Tensor:  # tokens (B, 1)
        out, box[0] = decode(store, box[0], tokens[:, 0])
        return out

    return decode_loop(input_ids, logits, step, opts)
