"""Batch metadata: which adapter slot every token uses, and the same tokens grouped into segments.

Built once per forward from per-row slot ids (and per-row token counts in prefill) by pure functions, then
shared by every adapted module of the model: a slot that is empty in one module's pool is a no-op there.

Batch invariance (issues 16 and 18): a decode token's result must not depend on what else its step carries.
A paged step packs the decode tokens of running rows (rows of one token) beside prefill chunks; run through
the segment (SGMV) kernels with them, a decode token would share `tl.dot` tiles, a BLOCK_M and a reduction
order with whatever rows the step holds, and on CPU a padded `bmm` whose shape follows the batch. So metadata
with rows of one token beside longer rows carries a `MixedSplit`: the same tokens as two disjoint parts, the
one-token rows for the per-token (BGMV) launch, exactly as a decode-only step runs them, and the longer rows
for the segment launch. The ops (`kernels.dispatch`, `kernels.slices`) run each part (`launch_parts`).
vLLM's punica wrapper instead picks one path per batch (`is_prefill`: any prefill sends every token through
SGMV), which is what this avoids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from kernels.errors import ShapeError

SlotIds = Sequence[int] | Tensor


@dataclass(frozen=True)
class BatchMeta:
    """Per-token slots and slot-grouped segments of one batch of `num_tokens` tokens.

    Tokens are the rows of the 2-D activations `x: (T, H)` the ops receive: in prefill the rows of the batch
    laid end to end (row 0's tokens, then row 1's, ...), in decode one token per row.

    Fields (device tensors are int64 and live on the activations' device):
        token_slots: (T,)   slot of every token; -1 = no adapter. Read by the per-token (BGMV) kernels.
        token_order: (Ta,)  the Ta tokens that have a slot, stably sorted by slot: a permutation that makes
                            tokens sharing a slot contiguous even when their rows are not.
        seg_starts:  (S,)   segment s covers token_order[seg_starts[s] : seg_starts[s] + seg_lens[s]].
        seg_lens:    (S,)   its length (>= 1).
        seg_slots:   (S,)   its slot; strictly increasing, so every slot has exactly one segment.
        decode:             True -> the ops use the per-token (BGMV) kernels, False -> the segment (SGMV) ones.
        num_tokens, max_seg_len, max_slot (-1 when no token has a slot), and host copies of the three
        segment fields (`host_seg_*`, tuples of ints) so launch code and the reference never sync the device.

    Worked example (prefill): `build_prefill_meta(row_slots=[2, -1, 0, 2], row_lengths=[3, 2, 1, 2])`

        tokens       0  1  2 | 3  4 | 5 | 6  7        (rows separated by |)
        token_slots  2  2  2  -1 -1   0   2  2
        token_order  [5, 0, 1, 2, 6, 7]               slot 0 first, then slot 2 (rows 0 and 3 merged)
        segments     slot 0: start 0, len 1  -> token 5
                     slot 2: start 1, len 5  -> tokens 0 1 2 6 7
        seg_slots=[0, 2], seg_starts=[0, 1], seg_lens=[1, 5], max_seg_len=5, max_slot=2, num_tokens=8

    The same rows in decode, `build_decode_meta([2, -1, 0, 2])`: token_slots=[2, -1, 0, 2],
    token_order=[2, 0, 3], seg_slots=[0, 2], seg_starts=[0, 1], seg_lens=[1, 2], decode=True.
    """

    token_slots: Tensor  # (T,) int64
    token_order: Tensor  # (Ta,) int64
    seg_starts: Tensor  # (S,) int64
    seg_lens: Tensor  # (S,) int64
    seg_slots: Tensor  # (S,) int64
    decode: bool
    num_tokens: int
    max_seg_len: int
    max_slot: int
    host_seg_starts: tuple[int, ...]
    host_seg_lens: tuple[int, ...]
    host_seg_slots: tuple[int, ...]
    # Tokens per row when every row has the same number (a padded (B, L) batch, or decode): the row-major
    # CPU path (kernels/grouped.py) then needs no token gather. 0 when rows differ.
    uniform_row_len: int = 0
    row_slots: tuple[int, ...] = ()
    # Static decode metadata (`build_static_decode_meta`): `token_slots` is a buffer whose contents change between
    # calls (a CUDA graph's input), so nothing host-side describes the tokens; only per-token ops may read it.
    static: bool = False
    # Rows of one token beside longer rows (a mixed paged step): the two parts the ops launch separately.
    split: MixedSplit | None = None

    def launch_parts(self) -> tuple[tuple[slice, BatchMeta], ...]:
        """What an op runs: `(rows, part)` pairs, `part` describing the tokens `x[rows]` (its token indices
        count from `rows.start`). One pair `(slice(None), self)` unless the metadata is split; then the
        one-token rows' per-token window first, and the longer rows' segments if any."""
        split = self.split
        if split is None:
            return ((_ALL, self),)
        return split.parts

    @property
    def num_segments(self) -> int:
        return len(self.host_seg_slots)

    @property
    def device(self) -> torch.device:
        return self.token_slots.device

    def segments(self) -> list[tuple[int, int, int]]:
        """`(slot, start, length)` of every segment, from the host copies (no device sync)."""
        return list(zip(self.host_seg_slots, self.host_seg_starts, self.host_seg_lens))

    def to(self, device: torch.device | str) -> BatchMeta:
        """The same metadata with its tensors on `device` (host fields are shared)."""
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return BatchMeta(
            token_slots=move(self.token_slots),
            token_order=move(self.token_order),
            seg_starts=move(self.seg_starts),
            seg_lens=move(self.seg_lens),
            seg_slots=move(self.seg_slots),
            decode=self.decode,
            num_tokens=self.num_tokens,
            max_seg_len=self.max_seg_len,
            max_slot=self.max_slot,
            host_seg_starts=self.host_seg_starts,
            host_seg_lens=self.host_seg_lens,
            host_seg_slots=self.host_seg_slots,
            uniform_row_len=self.uniform_row_len,
            row_slots=self.row_slots,
            static=self.static,
            split=None if self.split is None else self.split.to(device),
        )


_ALL = slice(None)


class MixedSplit(NamedTuple):
    """Metadata of rows of one token beside longer rows, in two disjoint parts over the same T tokens.

    Fields:
        start:     first token of the per-token window.
        per_token: decode metadata (`decode=True`, one token per row) of the window `[start, start + W)`, W =
                   `per_token.num_tokens`, the smallest run of tokens holding every one-token row; tokens
                   of longer rows inside the window have slot -1. Its token indices count from `start`.
        segments:  prefill metadata (`decode=False`) of all T tokens in which the one-token rows have slot -1,
                   so its segments hold the longer rows only.
        parts:     `launch_parts()`: `(slice(start, start + W), per_token)`, then `(slice(None), segments)`
                   when the longer rows have segments.

    Example: rows of lengths [1, 5, 1, 1] with slots [2, 0, 2, -1] (tokens 0 | 1-5 | 6 | 7): per_token covers
    tokens 0-7 (W = 8, start 0) with token_slots [2, -1, -1, -1, -1, -1, 2, -1]; segments has token_slots
    [-1, 0, 0, 0, 0, 0, -1, -1] and one segment (slot 0, tokens 1-5). Decode rows first (the engine's order)
    give a window of just the decode tokens.
    """

    start: int
    per_token: BatchMeta
    segments: BatchMeta
    parts: tuple[tuple[slice, BatchMeta], ...]

    def to(self, device: torch.device | str) -> MixedSplit:
        per_token, segments = self.per_token.to(device), self.segments.to(device)
        return _split(self.start, per_token, segments)


def _split(start: int, per_token: BatchMeta, segments: BatchMeta) -> MixedSplit:
    window = slice(start, start + per_token.num_tokens)
    parts = ((window, per_token), (_ALL, segments)) if segments.num_segments else ((window, per_token),)
    return MixedSplit(start, per_token, segments, parts)


def _as_int_list(values: SlotIds | Sequence[int], name: str) -> list[int]:
    if isinstance(values, Tensor):
        if values.dim() != 1 or values.is_floating_point() or values.is_complex():
            raise ShapeError(
                f"{name} must be a 1-D integer tensor, got {values.dtype} of shape {tuple(values.shape)}"
            )
        return [int(v) for v in values.tolist()]  # one host copy when the tensor lives on a device
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ShapeError(f"{name} must hold ints, got {type(v).__name__} {v!r}")
        out.append(v)
    return out


def _long(values: list[int]) -> Tensor:
    return torch.tensor(values, dtype=torch.int64)


def build_prefill_meta(
    row_slots: SlotIds, row_lengths: Sequence[int] | Tensor, *, device: torch.device | str | None = None
) -> BatchMeta:
    """Metadata for rows of `row_lengths[i]` tokens each, laid end to end; row i uses slot `row_slots[i]`.

    `row_slots`: one slot id per row, -1 for no adapter. `row_lengths`: tokens per row (0 allowed). For a
    padded (B, L, H) batch pass `[L] * B` and flatten the activations to (B * L, H). Uses the segment (SGMV)
    kernels; rows of one token (a paged step's decode tokens) take the per-token (BGMV) launch, as in a
    decode-only step, through `split` (`MixedSplit`), so their results do not depend on the other rows. See
    `BatchMeta` for a worked example.
    """
    return _build(row_slots, row_lengths, decode=False, device=device)


def build_decode_meta(row_slots: SlotIds, *, device: torch.device | str | None = None) -> BatchMeta:
    """Metadata for one token per row (decode): token i uses slot `row_slots[i]`, in any order.

    Uses the per-token (BGMV) kernels, which read `token_slots` and need no sort; the segments are built too,
    so the reference (and the segment kernels) accept the same metadata.
    """
    slots = _as_int_list(row_slots, "row_slots")
    return _build(slots, [1] * len(slots), decode=True, device=device)


def build_static_decode_meta(token_slots: Tensor) -> BatchMeta:
    """Decode metadata over a static buffer `token_slots` (T,) int64 (read at every call, never copied), for a
    step captured once and replayed with other contents (adapters_core/paged/static_decode.py).

    No host field may describe the tokens, since they change without this object knowing: `host_seg_*` hold one
    pseudo-segment over all T tokens (launchers only test that some token may carry an adapter), `max_slot` is
    -1 and `row_slots` empty. The per-token ops read `token_slots` alone (BGMV kernels, the IA3 ops,
    `kernels.static_bgmv` on the torch backend); `lora_shrink`/`lora_expand` on the torch backend refuse it.
    """
    if token_slots.dim() != 1 or token_slots.dtype != torch.int64:
        raise ShapeError(
            f"token_slots must be a 1-D int64 tensor, got {token_slots.dtype} {tuple(token_slots.shape)}"
        )
    n = token_slots.shape[0]
    device = token_slots.device
    return BatchMeta(
        token_slots=token_slots,
        token_order=torch.arange(n, dtype=torch.int64, device=device),
        seg_starts=torch.zeros(1, dtype=torch.int64, device=device),
        seg_lens=torch.full((1,), n, dtype=torch.int64, device=device),
        seg_slots=torch.zeros(1, dtype=torch.int64, device=device),
        decode=True,
        num_tokens=n,
        max_seg_len=n,
        max_slot=-1,
        host_seg_starts=(0,),
        host_seg_lens=(n,),
        host_seg_slots=(0,),
        row_slots=(),
        static=True,
    )


def _build(
    row_slots: SlotIds,
    row_lengths: Sequence[int] | Tensor,
    *,
    decode: bool,
    device: torch.device | str | None,
    split: bool = True,
) -> BatchMeta:
    slots = _as_int_list(row_slots, "row_slots")
    lengths = _as_int_list(row_lengths, "row_lengths")
    if len(slots) != len(lengths):
        raise ShapeError(
            f"row_slots has {len(slots)} rows but row_lengths has {len(lengths)}; give one of each per row"
        )
    for i, (slot, length) in enumerate(zip(slots, lengths)):
        if slot < -1:
            raise ShapeError(f"row {i} has slot {slot}; slots are >= 0, or -1 for no adapter")
        if length < 0:
            raise ShapeError(f"row {i} has length {length}; lengths are >= 0")

    row_starts = [0] * len(lengths)  # first token of every row
    total = 0
    for i, length in enumerate(lengths):
        row_starts[i] = total
        total += length

    # Rows that carry tokens with an adapter, stably sorted by slot; their tokens in that order = token_order.
    rows = sorted((i for i, s in enumerate(slots) if s >= 0 and lengths[i] > 0), key=lambda i: slots[i])
    seg_slots: list[int] = []
    seg_starts: list[int] = []
    seg_lens: list[int] = []
    pos = 0
    for i in rows:
        if seg_slots and seg_slots[-1] == slots[i]:
            seg_lens[-1] += lengths[i]
        else:
            seg_slots.append(slots[i])
            seg_starts.append(pos)
            seg_lens.append(lengths[i])
        pos += lengths[i]

    if total == len(lengths):  # one token per row (decode): tokens are rows
        token_slots, token_order = _long(slots), _long(rows)  # (T,), (Ta,)
    else:
        token_slots = torch.repeat_interleave(_long(slots), _long(lengths))  # (T,)
        sorted_lens = _long([lengths[i] for i in rows])  # (R,)
        sorted_starts = _long([row_starts[i] for i in rows])  # (R,)
        # token_order[p] = start of the row that owns position p + offset of p inside that row.
        first_pos = torch.cumsum(sorted_lens, 0) - sorted_lens  # (R,)
        offsets = torch.arange(pos, dtype=torch.int64) - torch.repeat_interleave(
            first_pos, sorted_lens
        )  # (Ta,)
        token_order = torch.repeat_interleave(sorted_starts, sorted_lens) + offsets  # (Ta,)

    mixed = None
    if split and not decode and 1 in lengths:
        mixed = _mixed_split(slots, lengths, row_starts)
    meta = BatchMeta(
        token_slots=token_slots,
        token_order=token_order,
        seg_starts=_long(seg_starts),
        seg_lens=_long(seg_lens),
        seg_slots=_long(seg_slots),
        decode=decode,
        num_tokens=total,
        max_seg_len=max(seg_lens, default=0),
        max_slot=max(seg_slots, default=-1),
        host_seg_starts=tuple(seg_starts),
        host_seg_lens=tuple(seg_lens),
        host_seg_slots=tuple(seg_slots),
        uniform_row_len=lengths[0] if lengths and all(n == lengths[0] for n in lengths) else 0,
        row_slots=tuple(slots),
        split=mixed,
    )
    return meta if device is None or torch.device(device).type == "cpu" else meta.to(device)


def _mixed_split(slots: list[int], lengths: list[int], row_starts: list[int]) -> MixedSplit:
    """The `MixedSplit` of rows with lengths `lengths` (some of one token), on the host."""
    ones = [i for i, n in enumerate(lengths) if n == 1]
    start = row_starts[ones[0]]
    window = [-1] * (row_starts[ones[-1]] + 1 - start)  # (W,) slot of every token of the window
    for i in ones:
        window[row_starts[i] - start] = slots[i]
    per_token = _build(window, [1] * len(window), decode=True, device=None)
    longer = [-1 if n == 1 else s for s, n in zip(slots, lengths)]
    segments = _build(longer, lengths, decode=False, device=None, split=False)
    return _split(start, per_token, segments)
