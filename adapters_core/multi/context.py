"""The per-forward batch context every multi-adapter layer reads: which slot each row uses.

MultiAdapterModel sets one `RowContext` around a forward (or a whole `generate`) and the wrapped layers read
it; layers never see adapter names. Kernel metadata (`kernels.BatchMeta`) is built lazily once per
(tokens-per-row, device) and shared by every layer: the encoder and decoder of T5, or prefill and each decode
step, simply ask for a different length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from kernels import BatchMeta, build_decode_meta, build_prefill_meta


@dataclass
class RowContext:
    """Per-row slots of the running batch. `row_slots[i]` = slot of row i's adapter, -1 = base model."""

    row_slots: list[int]
    # Per-forward state of prompt-family rows (multi/prompts.py `PromptBatch`): read by the prefix hooks.
    prompt: Any = None
    # (B,) added to the positions the model numbers its tokens with, per row (PromptStore's position hooks):
    # BART's decoder counts cache columns, so minus the row's masked ones; an encoder's prefix rows plus the
    # prefix length. Set per forward by prompt_layout.py / steps.py.
    position_offset: torch.Tensor | None = None
    _metas: dict[tuple[int, str], BatchMeta] = field(default_factory=dict)
    _slot_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    _lengths: set[int] = field(default_factory=set)  # tokens per row seen in this forward (note_shape)

    @property
    def batch_size(self) -> int:
        return len(self.row_slots)

    def __post_init__(self) -> None:
        # Every wrapped layer asks which slots the batch uses on every call: computed once. `row_slots`
        # is never mutated (select/concat build new contexts).
        self.slot_set: frozenset[int] = frozenset(self.row_slots)

    def note_shape(self, shape: torch.Size) -> None:
        """Record the tokens per row of an activation (B, L, ..., H) a layer saw, so that a later layer can
        tell a model's flattened tokens (B·L, H) from something it cannot attribute to rows (`rows_view`)."""
        if len(shape) > 2 and shape[0] == len(self.row_slots):
            self._lengths.add(math.prod(shape[1:-1]))

    def rows_view(self, x: torch.Tensor, where: str) -> torch.Tensor:
        """`x` as (B, L, H) with row i's tokens in `[i]`: adapters follow tokens, not the leading dim.

        (B, ..., H) keeps its rows; (B·L, H) — OPT flattens every token before its MLP — is accepted when L is
        the tokens per row of an activation seen in this forward, rows in order (a reshape, no copy).
        """
        rows = len(self.row_slots)
        if x.shape[0] == rows:
            return x.reshape(rows, -1, x.shape[-1])
        tokens = x.numel() // x.shape[-1]
        if x.dim() == 2 and tokens % rows == 0 and tokens // rows in self._lengths:
            return x.view(rows, tokens // rows, x.shape[-1])
        raise RuntimeError(
            f"{where}: got activations {tuple(x.shape)} for a batch of {rows} rows (one adapter name per row); "
            "they are neither (rows, …) nor the batch's tokens flattened in row order, so no token can be given "
            "its row's adapter (beam search and expanded batches are not supported)."
        )

    @property
    def any_adapter(self) -> bool:
        return any(s >= 0 for s in self.row_slots)

    def slots_tensor(self, device: torch.device) -> torch.Tensor:
        """(B,) int64 row slots on `device`."""
        key = str(device)
        if key not in self._slot_tensors:
            self._slot_tensors[key] = torch.tensor(self.row_slots, dtype=torch.int64, device=device)
        return self._slot_tensors[key]

    def meta(self, tokens_per_row: int, device: torch.device) -> BatchMeta:
        """Kernel metadata for activations shaped (B, tokens_per_row, H), flattened to (B·L, H)."""
        key = (tokens_per_row, str(device))
        if key not in self._metas:
            if tokens_per_row == 1:
                self._metas[key] = build_decode_meta(self.row_slots, device=device)
            else:
                self._metas[key] = build_prefill_meta(
                    self.row_slots, [tokens_per_row] * len(self.row_slots), device=device
                )
        return self._metas[key]

    def row_groups(self) -> dict[int, list[int]]:
        """slot -> the rows that use it (slot -1 included)."""
        groups: dict[int, list[int]] = {}
        for row, slot in enumerate(self.row_slots):
            groups.setdefault(slot, []).append(row)
        return groups

    def index_groups(self, tokens: int, device: torch.device) -> dict[int, Any]:
        """slot -> an index of `x[index]` that picks that slot's tokens from activations (B, tokens, ...):
        here the rows (a list for dim 0); `TokenContext` answers with (0, token indices) of a packed stream."""
        return self.row_groups()


class ContextHolder:
    """A mutable cell shared by the model and all its wrapped layers (no globals, no thread-locals)."""

    def __init__(self) -> None:
        self.current: RowContext | None = None


@dataclass
class TokenContext(RowContext):
    """The packed stream of a paged step (adapters_core/paged): activations are (1, T, H) (or (T, H) where a
    model flattens), a run of tokens per segment, segment s under slot `row_slots[s]` for `seg_lengths[s]`
    tokens. `layouts` maps a token count to its (slots, lengths) segments: the whole stream, and the tokens the
    LM head sees (`logits_to_keep`: one per chunk that wants logits). Layers read it through the same methods
    as a `RowContext`, so every adapter follows its tokens, not a row of a padded batch. A layout that mixes
    one-token segments (decode tokens) with longer ones gets metadata split in two (`kernels.BatchMeta.split`):
    the decode tokens run the per-token path exactly as in a decode-only step, so their bits never depend on the
    prefill chunks beside them (issue 16)."""

    layouts: dict[int, tuple[list[int], list[int]]] = field(default_factory=dict)
    _groups: dict[tuple[int, str], dict[int, Any]] = field(default_factory=dict)

    def _layout(self, tokens: int, where: str) -> tuple[list[int], list[int]]:
        try:
            return self.layouts[tokens]
        except KeyError:
            raise RuntimeError(
                f"{where}: got {tokens} tokens, but the paged step packed {sorted(self.layouts)}; the model moved "
                "tokens in a way the paged path cannot attribute to adapters."
            ) from None

    def note_shape(self, shape: torch.Size) -> None:
        return None

    def rows_view(self, x: torch.Tensor, where: str) -> torch.Tensor:
        tokens = x.numel() // x.shape[-1]
        self._layout(tokens, where)
        return x.reshape(1, tokens, x.shape[-1])

    def meta(self, tokens_per_row: int, device: torch.device) -> BatchMeta:
        key = (tokens_per_row, str(device))
        if key not in self._metas:
            slots, lengths = self._layout(tokens_per_row, "adapter metadata")
            if all(n == 1 for n in lengths):
                self._metas[key] = build_decode_meta(slots, device=device)
            else:
                self._metas[key] = build_prefill_meta(slots, lengths, device=device)
        return self._metas[key]

    def index_groups(self, tokens: int, device: torch.device) -> dict[int, Any]:
        key = (tokens, str(device))
        if key not in self._groups:
            slots, lengths = self._layout(tokens, "per-slot tokens")
            per_slot: dict[int, list[int]] = {}
            at = 0
            for slot, n in zip(slots, lengths):
                per_slot.setdefault(slot, []).extend(range(at, at + n))
                at += n
            self._groups[key] = {
                s: (0, torch.tensor(idx, dtype=torch.long, device=device)) for s, idx in per_slot.items()
            }
        return self._groups[key]
