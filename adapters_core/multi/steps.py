"""`DecodeState`: the running batch of the step API (`MultiAdapterModel.prefill/decode`), and how rows leave
(`select`) and join (`concat`) between decode steps.

B rows, S cache columns, per attention layer H heads of width hd. Every row keeps its own column layout:

    causal LM, row r:   mask  [0 … 0][prefix m][0 … 0][virtual v][prompt with own left pads][generated …]
                        keys  (B, H, S, hd) in the same columns; columns where mask == 0 are never attended
    T5 decoder, row r:  mask  [0 … 0][prefix m][decoder_start][generated …]       (self-attention cache)
                        encoder_hidden (B, Le, d), encoder_mask (B, Le): [virtual v][prompt][0 … 0]
                        cross-attention keys (B, H, Le, hd), in the encoder's columns

Columns are only ever added on the left (`concat` left-pads the shorter caches with masked columns) or dropped
on the left when no row uses them (`select`), so what a row attends to never changes: its positions are its
own (`next_position`, not the column index), T5's relative bias sees the same key-query distances (a shift of
every column of a row changes no distance) and the encoder side is right-padded, where the cross-attention
mask hides it. That is why a row's tokens do not depend on which rows it shares a batch with.

The per-row adapter slots travel with the rows: each state owns the `RowContext` its forwards run under, so
the kernels' metadata (per row, one token each in decode) is built once per batch composition, not per step.

The steps: `prefill` lays the rows out with prompt_layout.py (every row's virtual
tokens and prefix enter here, once) and runs one forward with a fresh cache; `decode` feeds one token per row:
one forward of (B, 1) tokens with the cache, the rows' own next positions and the cache mask grown by one
column. Both expect the state's `RowContext` to be the model's current one (MultiAdapterModel installs it) and
return (B, V) logits of each row's last position. The serving engine (`MultiAdapterModel.prefill/decode`) and
the library's `generate` (`run_generate`, the one decoding loop of prompt_learning/generation.py over these
steps) both run them, so greedy decoding of a row equals that row decoded alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import DynamicCache, EncoderDecoderCache
from transformers.cache_utils import DynamicLayer
from transformers.modeling_outputs import BaseModelOutput

from ..prompt_learning.generation import decode_loop, decode_options
from .context import RowContext
from .masks import attention_masks
from .prompt_layout import plan_batch, prefix_cache
from .prompts import PromptStore

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values: (B, H, S, hd) each


@dataclass(eq=False)
class DecodeState:
    """Opaque per-batch decoding state (module docstring for the column layout).

    ctx:            the rows' slots (`ctx.row_slots[i]`, -1 = base) and their cached kernel metadata.
    adapters:       per row the `LoadedAdapter` it started with (None = base); checked when adapters change.
    epoch:          the model's adapter epoch when the state was made (a cheap "did anything change" test).
    cache:          `DynamicCache` (causal) or `EncoderDecoderCache` (T5); every layer a plain `DynamicLayer`.
    mask:           (B, S) int64, 1 where the cache column holds one of the row's keys.
    next_position:  (B,) int64, position id of each row's next token (causal LMs; T5 counts decoder tokens).
    encoder_hidden: (B, Le, d) and encoder_mask (B, Le) for T5, else None.

    `decode` consumes the state it is given (the cache grows in place) and returns the next one; `select` and
    `concat` return new states and leave their inputs usable.
    """

    ctx: RowContext
    adapters: tuple[Any, ...]
    epoch: int
    cache: DynamicCache | EncoderDecoderCache
    mask: torch.Tensor
    next_position: torch.Tensor
    encoder_hidden: torch.Tensor | None = None
    encoder_mask: torch.Tensor | None = None
    spent: bool = field(default=False, repr=False)

    @property
    def rows(self) -> int:
        return len(self.ctx.row_slots)

    @property
    def adapter_names(self) -> list[str | None]:
        return [None if a is None else a.name for a in self.adapters]

    @property
    def cache_length(self) -> int:
        """S: cache columns (the longest row's prefix + prompt + generated tokens)."""
        return int(self.mask.shape[1])

    @property
    def is_seq2seq(self) -> bool:
        return self.encoder_hidden is not None

    def check_usable(self) -> None:
        if self.spent:
            raise RuntimeError(
                "this DecodeState was already passed to decode(), which consumed it; use the state it returned."
            )

    def select(self, keep: list[int]) -> DecodeState:
        """The rows `keep`, in this order (finished rows leave). Columns no kept row uses are dropped."""
        self.check_usable()
        if any(not 0 <= i < self.rows for i in keep):
            raise IndexError(f"select({keep}): rows are 0..{self.rows - 1}")
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)  # (B', S)
        start = _first_used(mask)  # leading columns that no kept row attends to
        mask = mask[:, start:]
        ctx = RowContext([self.ctx.row_slots[i] for i in keep])
        adapters = tuple(self.adapters[i] for i in keep)
        if not self.is_seq2seq:
            cache: Any = _cache([(k[index, :, start:], v[index, :, start:]) for k, v in _kv(self.cache)])
            return replace(
                self,
                ctx=ctx,
                adapters=adapters,
                cache=cache,
                mask=mask,
                next_position=self.next_position[index],
            )
        assert self.encoder_hidden is not None and self.encoder_mask is not None
        enc_mask = self.encoder_mask.index_select(0, index)
        end = enc_mask.shape[1] - _first_used(enc_mask.flip(1))  # trailing encoder columns no kept row uses
        assert isinstance(self.cache, EncoderDecoderCache)
        own = [(k[index, :, start:], v[index, :, start:]) for k, v in _kv(self.cache.self_attention_cache)]
        cross = [(k[index, :, :end], v[index, :, :end]) for k, v in _kv(self.cache.cross_attention_cache)]
        return replace(
            self,
            ctx=ctx,
            adapters=adapters,
            cache=EncoderDecoderCache(_cache(own), _cache(cross)),
            mask=mask,
            next_position=self.next_position[index],
            encoder_hidden=self.encoder_hidden[index, :end],
            encoder_mask=enc_mask[:, :end],
        )

    @staticmethod
    def concat(states: list[DecodeState]) -> DecodeState:
        """One state with the rows of `states` in order (the running batch, then newly prefilled rows).
        Shorter caches are left-padded with masked columns (T5's encoder side is right-padded)."""
        states = [s for s in states if s.rows] or states[:1]
        if not states:
            raise ValueError("concat() needs at least one DecodeState")
        for s in states:
            s.check_usable()
        if len(states) == 1:
            return states[0]
        if len({s.is_seq2seq for s in states}) != 1:
            raise ValueError("cannot concat causal-LM and encoder-decoder states")
        first = states[0]
        ctx = RowContext([slot for s in states for slot in s.ctx.row_slots])
        common: dict[str, Any] = {
            "ctx": ctx,
            "adapters": tuple(a for s in states for a in s.adapters),
            "epoch": min(s.epoch for s in states),  # a stale part makes decode re-check every row's adapter
            "mask": _pad_cat([s.mask for s in states], left=True),
            "next_position": torch.cat([s.next_position for s in states]),
        }
        if not first.is_seq2seq:
            cache: Any = _cat_caches([s.cache for s in states], left=True)
            return DecodeState(cache=cache, **common)
        parts = [s.cache for s in states]
        assert all(isinstance(c, EncoderDecoderCache) for c in parts)
        own = _cat_caches([c.self_attention_cache for c in parts], left=True)
        cross = _cat_caches([c.cross_attention_cache for c in parts], left=False)
        return DecodeState(
            cache=EncoderDecoderCache(own, cross),
            encoder_hidden=_pad_cat([s.encoder_hidden for s in states], left=False),  # type: ignore[misc]
            encoder_mask=_pad_cat([s.encoder_mask for s in states], left=False),  # type: ignore[misc]
            **common,
        )


def _first_used(mask: torch.Tensor) -> int:
    """Index of the first column of (B, S) `mask` that some row uses (0 for an empty batch)."""
    used = mask.any(dim=0)
    return int(used.long().argmax()) if mask.shape[0] and bool(used.any()) else 0


def _kv(cache: Any) -> list[KV]:
    """Per layer (keys, values) of a `DynamicCache`, each (B, H, S, hd)."""
    out = []
    for i, layer in enumerate(cache.layers):
        if type(layer) is not DynamicLayer or not layer.is_initialized:
            raise NotImplementedError(
                f"cache layer {i} is a {type(layer).__name__}{'' if layer.is_initialized else ' (empty)'}; rows "
                "can only leave or join full-attention DynamicLayer caches (sliding-window and static caches are "
                "not supported by the step API)."
            )
        out.append((layer.keys, layer.values))
    return out


def _cache(pairs: Sequence[KV]) -> DynamicCache:
    """A `DynamicCache` holding `pairs` as they are (no copy, unlike `DynamicCache(pairs)`)."""
    cache = DynamicCache()
    for k, v in pairs:
        layer = DynamicLayer()
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
        cache.layers.append(layer)
    return cache


def _pad_cat(parts: Sequence[torch.Tensor], *, left: bool, dim: int = 1) -> torch.Tensor:
    """Join along dim 0 tensors whose `dim` sizes differ: zero-padded on the left or the right of `dim`."""
    width = max(int(p.shape[dim]) for p in parts)
    shape = list(parts[0].shape)
    shape[0], shape[dim] = sum(int(p.shape[0]) for p in parts), width
    out = parts[0].new_zeros(shape)
    row = 0
    for p in parts:
        n, w = int(p.shape[0]), int(p.shape[dim])
        cols = slice(width - w, width) if left else slice(0, w)
        index: list[Any] = [slice(row, row + n)] + [slice(None)] * (p.dim() - 1)
        index[dim] = cols
        out[tuple(index)] = p
        row += n
    return out


def _cat_caches(caches: Sequence[Any], *, left: bool) -> DynamicCache:
    """Join `DynamicCache`s along the batch, padding the sequence dim (-2) of every layer (see `_pad_cat`)."""
    per_state = [_kv(c) for c in caches]
    if len({len(layers) for layers in per_state}) != 1:
        raise ValueError(
            "cannot concat caches with different numbers of layers (states of different models?)"
        )
    pairs = [
        (
            _pad_cat([layers[i][0] for layers in per_state], left=left, dim=2),
            _pad_cat([layers[i][1] for layers in per_state], left=left, dim=2),
        )
        for i in range(len(per_state[0]))
    ]
    return _cache(pairs)


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
