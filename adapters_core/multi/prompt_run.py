"""Forward and generation of a mixed batch laid out by prompt_layout.py (any method on any row).

* `run_forward`: one call of the base model over the laid-out batch; per-token outputs are cut back to the
  real positions (B, L, ·) aligned with `input_ids` for every row, whatever its method — unlike PEFT, whose
  prompt-tuning outputs start with `n` virtual positions (§15.3).
* `run_generate`: greedy or sampled decoding in the style of prompt_learning/generation.py over step_run.py's
  `prefill` and `decode` (the serving engine's steps) — the virtual tokens and prefixes enter once, at prefill,
  then one real token per step with the KV cache and each row's own next position — so greedy decoding of a
  row equals that row decoded alone.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.utils import ModelOutput

from ..prompt_learning.generation import _loop, decode_options
from .context import RowContext
from .masks import attention_masks
from .prompt_layout import plan_batch, prefix_cache
from .prompts import PromptBatch, PromptStore
from .step_run import decode, decoder_start, prefill

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


@torch.no_grad()
def run_generate(store: PromptStore, ctx: RowContext, kwargs: dict[str, Any]) -> torch.Tensor:
    """Decode every row under its own adapter; returns (B, L + new) for causal LMs, (B, 1 + new) for T5.

    The loop is step_run.py's `prefill` then one `decode` per new token (the serving engine's steps)."""
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

    return _loop(input_ids, logits, step, opts)
