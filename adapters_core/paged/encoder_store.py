"""Where encoder-decoder rows keep their encoder's keys/values on the paged path (seq2seq.py says why here and
not in the block pool): per row (seq_id) and decoder layer, (K, V) each (H, Le, hd), Le the row's encoder length.

Decode rows cross-attend as one batch, over their keys padded to the longest row: `decode_slab` builds that
padded (B, H, Le_max, hd) tensor per layer once for a set of decode rows and keeps it while the same rows decode
in the same order (the steady state: no per-step copy); the rows' own entries then become views into it, so the
slab costs no second copy. A row that is re-encoded or released drops the slab (rebuilt at the next step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass
class EncodedRow:
    key: tuple[str | None, int, tuple[int, ...]]  # (adapter, slot, encoder ids) it was encoded for
    kv: list[KV]  # per decoder layer (K, V), each (H, Le, hd)


@dataclass
class DecodeSlab:
    """The decode rows' keys/values padded: per layer (K, V) each (B, H, Le_max, hd); mask (B, 1, 1, Le_max) bool
    (None when every row has Le_max columns)."""

    seq_ids: tuple[int, ...]
    layers: list[KV]
    mask: torch.Tensor | None


class EncoderStore:
    """Per row its cross-attention keys/values; `heads` per decoder layer (H, hd) and the decoder's position
    modules (seq2seq.py), found once per model."""

    def __init__(self) -> None:
        self.rows: dict[int, EncodedRow] = {}
        self.heads: list[tuple[int, int]] | None = None
        self.positions: tuple[Any, list[Any]] | None = None
        self.configs: list[Any] | None = None  # the configs the decoder's attention modules read
        self.slab: DecodeSlab | None = None

    def put(self, seq_id: int, row: EncodedRow) -> None:
        self.rows[seq_id] = row
        self._drop_slab(seq_id)

    def release(self, seq_id: int) -> None:
        """Drop the row's keys/values (idempotent)."""
        self.rows.pop(seq_id, None)
        self._drop_slab(seq_id)

    def _drop_slab(self, seq_id: int) -> None:
        if self.slab is not None and seq_id in self.slab.seq_ids:
            self.slab = None

    def decode_slab(self, seq_ids: tuple[int, ...]) -> DecodeSlab:
        """The padded keys/values of the decode rows `seq_ids` (module docstring)."""
        if self.slab is not None and self.slab.seq_ids == seq_ids:
            return self.slab
        rows = [self.rows[s].kv for s in seq_ids]
        lengths = [int(kv[0][0].shape[1]) for kv in rows]
        width = max(lengths)
        layers: list[KV] = []
        for layer in range(len(rows[0])):
            k0, v0 = rows[0][layer]
            k = k0.new_zeros(len(rows), k0.shape[0], width, k0.shape[2])
            v = v0.new_zeros(len(rows), v0.shape[0], width, v0.shape[2])
            for r, kv in enumerate(rows):
                k[r, :, : lengths[r]] = kv[layer][0]
                v[r, :, : lengths[r]] = kv[layer][1]
            layers.append((k, v))
        for r, s in enumerate(seq_ids):  # the rows' entries become views: no second copy
            self.rows[s].kv = [(k[r, :, : lengths[r]], v[r, :, : lengths[r]]) for k, v in layers]
        mask = None
        if min(lengths) != width:
            device = layers[0][0].device
            cols = torch.arange(width, device=device)[None]
            mask = (cols < torch.tensor(lengths, device=device)[:, None])[:, None, None]
        self.slab = DecodeSlab(seq_ids, layers, mask)
        return self.slab
