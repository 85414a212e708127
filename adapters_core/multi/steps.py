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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import DynamicCache, EncoderDecoderCache
from transformers.cache_utils import DynamicLayer

from .context import RowContext

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
        own = _cat_caches([c.self_attention_cache for c in parts], left=True)  # type: ignore[union-attr]
        cross = _cat_caches([c.cross_attention_cache for c in parts], left=False)  # type: ignore[union-attr]
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
