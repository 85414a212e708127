"""Build one batch's layout (multi/prompts.py docstring): embeddings, masks, positions and prefix caches.

Worked example (causal LM, B=2, L=3; row 0 prompt tuning with v=2, row 1 base with one left pad):

    N = 2, M = 0            index:       0     1     2     3     4
    row 0  inputs_embeds            [ P0  , P1  , e(a), e(b), e(c)]   mask [1,1,1,1,1]  positions [0,1,2,3,4]
    row 1  inputs_embeds            [ 0   , 0   , e(0), e(x), e(y)]   mask [0,0,0,1,1]  positions [0,0,0,0,1]
    real_index = [[2,3,4],[2,3,4]];  next_position = [5, 2]

`run_forward` is one call of the base model over the laid-out batch; per-token outputs
are cut back to the real positions (B, L, ·) aligned with `input_ids` for every row, whatever its method —
unlike PEFT, whose prompt-tuning outputs start with `n` virtual positions (§15.3).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache, EncoderDecoderCache
from transformers.utils import ModelOutput

from .context import RowContext
from .masks import attention_masks, sliding_window
from .prompts import PromptBatch, PromptStore


def plan_batch(
    store: PromptStore,
    row_slots: list[int],
    *,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
) -> PromptBatch:
    """Lay out a batch of real tokens (B, L) with each row's virtual tokens and prefix (see module docstring).

    `position_ids` (B, L), if given, are the real tokens' positions: kept for base/LoRA rows, shifted by the
    prefix length for prefix rows and ignored for virtual-token rows — PEFT's rules (§9.2, §10.2).
    """
    ref = input_ids if input_ids is not None else inputs_embeds
    assert ref is not None
    batch, length, device = ref.shape[0], ref.shape[1], ref.device
    prompts = [store.slots.get(s) for s in row_slots]
    v = torch.tensor(
        [p.length if p is not None and p.kind == "virtual" else 0 for p in prompts], device=device
    )
    m = torch.tensor(
        [p.length if p is not None and p.kind == "prefix" else 0 for p in prompts], device=device
    )
    n_virtual, n_prefix = int(v.max()), int(m.max())
    mask = (
        attention_mask
        if attention_mask is not None
        else torch.ones(batch, length, dtype=torch.long, device=device)
    )
    causal = store.kind == "causal"
    cols = torch.arange(length, device=device)
    # Index of each real token in the N+L sequence: the same for every row (causal) or after its own prompt.
    real_index = (n_virtual + cols).expand(batch, -1) if causal else v[:, None] + cols  # (B, L)
    virtual_start = n_virtual - v if causal else torch.zeros_like(v)  # (B,)

    seq_mask = mask.new_zeros(batch, n_virtual + length)
    seq_mask.scatter_(1, real_index, mask)
    vcols = torch.arange(n_virtual, device=device)
    in_virtual = vcols < v[:, None]  # (B, N): the row's first v virtual slots are used
    virtual_index = virtual_start[:, None] + vcols  # (B, N), valid where in_virtual
    virtual_index = virtual_index.clamp(max=n_virtual + length - 1)  # unused slots add 0 below
    if n_virtual:
        seq_mask.scatter_add_(1, virtual_index, in_virtual.to(mask.dtype))

    # Real positions: v + m + rank among the row's real tokens (padding never shifts a position).
    rank = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, L)
    real_pos = v[:, None] + m[:, None] + rank
    if position_ids is not None and not causal:
        raise ValueError(
            "position_ids cannot be combined with prompt tuning, P-tuning or prefix rows on an encoder base: "
            "the model numbers each row's virtual and real tokens itself; leave position_ids out."
        )
    if position_ids is not None:
        real_pos = torch.where((v > 0)[:, None], real_pos, position_ids + m[:, None])
    positions = None
    # Causal LMs get explicit positions (left padding must not count); encoders number their left-aligned rows
    # themselves, prefix rows shifted by the position hook (prompts.py), because the numbering is the model's
    # own (RoBERTa counts from padding_idx + 1).
    if causal and store.takes_positions:
        positions = torch.zeros(batch, n_virtual + length, dtype=torch.long, device=device)
        positions.scatter_(1, real_index, real_pos)
        if n_virtual:
            positions.scatter_add_(1, virtual_index, torch.where(in_virtual, vcols, 0))
    next_position = v + m + mask.sum(dim=1)

    embeds = None
    types = token_type_ids
    if n_virtual:
        real = inputs_embeds if inputs_embeds is not None else store.embed(input_ids)  # (B, L, d)
        embeds = real.new_zeros(batch, n_virtual + length, real.shape[-1])
        embeds.scatter_(1, real_index[..., None].expand(-1, -1, real.shape[-1]), real)
        for slot in {s for s, p in zip(row_slots, prompts) if p is not None and p.kind == "virtual"}:
            rows = [r for r, s in enumerate(row_slots) if s == slot]
            table = store.slots[slot].virtual
            assert table is not None
            n = table.shape[0]
            start = n_virtual - n if causal else 0
            embeds[rows, start : start + n] = table.to(real.dtype)
        if token_type_ids is not None:
            types = token_type_ids.new_zeros(batch, n_virtual + length)  # virtual tokens are segment 0
            types.scatter_(1, real_index, token_type_ids)
    if types is not None:  # PEFT drops token types for prompt tasks that do not keep them (§9.2)
        drop = [
            r
            for r, p in enumerate(prompts)
            if p is not None and p.kind != "adaption" and not p.keep_token_types
        ]
        if drop:
            types = types.clone()
            types[drop] = 0

    prefix_mask = mask.new_zeros(batch, n_prefix)
    prefix_mask[torch.arange(n_prefix, device=device) >= (n_prefix - m)[:, None]] = 1
    prefix = _prefix(store, row_slots, batch, n_prefix)
    full_mask = seq_mask if store.kind == "seq2seq" else torch.cat([prefix_mask, seq_mask], dim=1)
    return PromptBatch(
        n_virtual=n_virtual,
        n_prefix=n_prefix,
        inputs_embeds=embeds,
        attention_mask=full_mask,
        prefix_mask=prefix_mask,
        position_ids=positions,
        token_type_ids=types,
        real_index=real_index,
        next_position=next_position,
        prefix=prefix,
    )


def _prefix(
    store: PromptStore, row_slots: list[int], batch: int, n_prefix: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per attention layer (keys, values), each (B, H, M, hd): every prefix row's own prefix, left-padded."""
    slots = {s for s in row_slots if s in store.slots and store.slots[s].kind == "prefix"}
    if not slots:
        return []
    first = store.slots[next(iter(slots))].prefix
    out = []
    for layer, (k0, _) in enumerate(first):
        heads, _, hd = k0.shape
        keys = k0.new_zeros(batch, heads, n_prefix, hd)
        values = k0.new_zeros(batch, heads, n_prefix, hd)
        for slot in slots:
            rows = [r for r, s in enumerate(row_slots) if s == slot]
            k, v = store.slots[slot].prefix[layer]  # (H, m, hd)
            keys[rows, :, n_prefix - k.shape[1] :] = k
            values[rows, :, n_prefix - v.shape[1] :] = v
        out.append((keys, values))
    return out


def prefix_cache(store: PromptStore, batch: PromptBatch, *, for_generation: bool = False) -> object | None:
    """A fresh cache holding the batch's prefixes (a forward appends to its cache, so one per call).

    Causal LMs: `DynamicCache` (an empty one when generating without prefixes); T5: `EncoderDecoderCache` with the
    prefix in the decoder self-attention and an empty cross-attention part (§10.2); encoders: a `DynamicCache`
    the pre-hooks hand to each self-attention layer.
    """
    pairs = [(k, v) for k, v in batch.prefix]
    if store.kind == "seq2seq":
        if not pairs and not for_generation:
            return None
        return EncoderDecoderCache(DynamicCache(pairs) if pairs else DynamicCache(), DynamicCache())
    if pairs:
        return DynamicCache(pairs)
    if not for_generation:
        return None
    # Sliding-window layers drop columns by index: with masks.py's windows every column is kept instead.
    return DynamicCache() if sliding_window(store.model.config) else DynamicCache(config=store.model.config)


_CACHE_KEYS = ("cache", "past_key_values")
# Per-token outputs over the input positions: cut back to the real ones.
_TOKEN_FIELDS = ("logits", "last_hidden_state", "start_logits", "end_logits")
_TOKEN_TUPLES = ("hidden_states",)
_ENCODER_FIELDS = ("encoder_last_hidden_state",)
_ENCODER_TUPLES = ("encoder_hidden_states",)


def run_forward(store: PromptStore, ctx: RowContext, kwargs: dict[str, Any]) -> Any:
    """`model(**kwargs)` with every row's prompt method applied (prompts.py docstring for the layout)."""
    model = store.model
    layout = store.needs_layout(ctx.row_slots)
    if any(kwargs.get(k) is not None for k in _CACHE_KEYS):
        if layout:
            raise ValueError(
                "a cache cannot be passed with prompt tuning, P-tuning or prefix rows in the batch (their virtual "
                "tokens and prefixes enter once, at prefill); use generate(), or a full forward without a cache."
            )
        return model(**kwargs)
    # Without virtual tokens or prefixes only a causal LM's padding needs explicit positions.
    mask = kwargs.get("attention_mask")
    if not layout and (
        store.kind != "causal" or mask is None or kwargs.get("position_ids") is not None or bool(mask.all())
    ):
        return model(**kwargs)
    call = dict(kwargs)
    input_ids, inputs_embeds = call.pop("input_ids", None), call.pop("inputs_embeds", None)
    batch = plan_batch(
        store,
        ctx.row_slots,
        input_ids=input_ids,
        attention_mask=call.pop("attention_mask", None),
        inputs_embeds=inputs_embeds,
        position_ids=call.pop("position_ids", None),
        token_type_ids=call.pop("token_type_ids", None),
    )
    ctx.prompt = batch
    if batch.inputs_embeds is not None:
        call["inputs_embeds"] = batch.inputs_embeds
    elif input_ids is not None:
        call["input_ids"] = input_ids
    else:
        call["inputs_embeds"] = inputs_embeds
    call["attention_mask"] = batch.attention_mask
    if batch.position_ids is not None:
        call["position_ids"] = batch.position_ids
    if batch.token_type_ids is not None:
        call["token_type_ids"] = batch.token_type_ids
    cache = prefix_cache(store, batch)
    if store.kind == "causal":  # sliding windows count each row's own tokens, not columns (masks.py)
        call["attention_mask"] = attention_masks(
            model, batch.attention_mask, batch.real_index.shape[1] + batch.n_virtual, cache
        )
    if store.kind == "encoder":
        batch.cache = cache  # handed to each self-attention by the pre-hooks
        ctx.position_offset = batch.prefix_mask.sum(dim=1) if batch.n_prefix else None
    elif cache is not None:
        call["cache"] = cache
    if store.kind == "seq2seq" and batch.n_prefix:
        call["decoder_attention_mask"] = _decoder_mask(batch, call)
        ctx.position_offset = -(batch.prefix_mask == 0).sum(dim=1)  # shorter prefixes are left-padded
    if store.kind == "causal" and batch.n_virtual and call.get("labels") is not None:
        labels = call["labels"]  # no loss on virtual or padded-virtual positions
        call["labels"] = torch.cat([labels.new_full((labels.shape[0], batch.n_virtual), -100), labels], dim=1)
    as_tuple = call.pop("return_dict", True) is False  # cut the positions on the ModelOutput, then convert
    out = _real_positions(store, batch, model(**call, return_dict=True))
    return out.to_tuple() if as_tuple else out


def _decoder_mask(batch: PromptBatch, call: dict[str, Any]) -> torch.Tensor:
    """T5: the decoder's mask prefixed with the rows' prefix masks, (B, M + L_dec)."""
    mask = call.get("decoder_attention_mask")
    if mask is None:
        ref = call.get("decoder_input_ids")
        ref = ref if ref is not None else call.get("labels")
        if ref is None:
            raise ValueError("pass decoder_input_ids (or labels) to an encoder-decoder model.")
        mask = torch.ones(ref.shape[:2], dtype=batch.prefix_mask.dtype, device=ref.device)
    return torch.cat([batch.prefix_mask.to(mask.dtype), mask], dim=1)


def _gather(t: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
    """(B, N+L, ...) -> (B, L, ...): each row's real positions."""
    index = batch.real_index.view(*batch.real_index.shape, *([1] * (t.dim() - 2))).expand(
        -1, -1, *t.shape[2:]
    )
    return t.gather(1, index)


def _real_positions(store: PromptStore, batch: PromptBatch, out: Any) -> Any:
    if not isinstance(out, ModelOutput) or (not batch.n_virtual and not batch.n_prefix):
        return out
    for (
        key
    ) in _CACHE_KEYS:  # it holds the padded layout (prefix, virtual positions): not the caller's to reuse
        if key in out:
            out[key] = None
    if not batch.n_virtual:
        return out
    total = batch.n_virtual + batch.real_index.shape[1]
    fields, tuples = (
        (_ENCODER_FIELDS, _ENCODER_TUPLES) if store.kind == "seq2seq" else (_TOKEN_FIELDS, _TOKEN_TUPLES)
    )
    for key in fields:
        t = out.get(key)
        if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[1] == total:
            out[key] = _gather(t, batch)
    for key in tuples:
        if out.get(key) is not None:
            out[key] = tuple(_gather(t, batch) for t in out[key])
    return out
