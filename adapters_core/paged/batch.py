"""`PagedBatch`: one `StepPlan` turned into the tensors a packed forward needs, checked against the pool.

The packed stream is the plan's chunks laid end to end, in plan order: T tokens, chunk i at
`[tok_start_i, tok_start_i + n_i)`. Per token: its input id (VIRTUAL positions get their adapter's virtual
embedding instead, `virtual`), its position id (what the row alone numbers it: stream position p, plus m for a
prefix-tuning adapter of m prefix positions, as PEFT numbers real tokens after the prefix) and its write slot in
the pool. Chunks of one token (decode, or a one-token prefill chunk) attend as one batch (`Decode`); longer
chunks one by one (`Prefill`). Keys of a row are laid out as `[its prefix m][stream 0 .. start + n - 1]`, and its
"extended" positions count that way too: the windows of sliding-window layers are measured in them, as for the
row alone (its prefix occupies the first m cache columns there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..multi.context import TokenContext
from .kv_cache import RESERVED_BLOCKS, KVPool
from .plan import VIRTUAL, SeqChunk, StepPlan


@dataclass
class Decode:
    """The one-token chunks. B rows; `blocks` (B, nb) each row's blocks (scratch 0 past its table); C = the
    longest row's length (the gathered blocks are cut there)."""

    tokens: torch.Tensor  # (B,) indices in the packed stream
    blocks: torch.Tensor  # (B, nb)
    width: int  # C: key columns gathered per row
    lengths: torch.Tensor  # (B,) stream positions cached incl. this token
    prefix: list[int]  # (B,) prefix length m per row
    prefix_slots: dict[int, list[int]]  # adapter slot -> rows with its prefix
    shortest: int = 1  # the shortest row's length (host int: tiles all rows see fully need no mask)
    _low: dict[int, torch.Tensor] = field(default_factory=dict)
    _prefix: torch.Tensor | None = None

    def prefix_column(self) -> torch.Tensor:
        """(B, 1) each row's prefix length m (made once per step)."""
        if self._prefix is None:
            self._prefix = torch.tensor(self.prefix, dtype=torch.long, device=self.blocks.device)[:, None]
        return self._prefix

    def hidden(self, window: int | None, first: int, width: int) -> torch.Tensor | None:
        """(B, width) bool for stream columns [first, first + width) (tiled decode): True where row b's query
        does not see the column (past its length, or out of its window); None when every row sees all of them.
        Extended positions differ from stream ones by the row's m on both sides, so m cancels in the window."""
        by_window = window is not None and first <= self.width - 1 - window
        if not (first + width > self.shortest or by_window):
            return None
        cols = torch.arange(first, first + width, device=self.blocks.device)
        hide = cols >= self.lengths[:, None]  # columns not written yet
        if window is not None and by_window:
            # columns <= length - 1 - window are out of the window (made once, for every layer of the step)
            low = self._low.get(window)
            if low is None:
                self._low[window] = low = self.lengths[:, None] - 1 - window
            hide.logical_or_(cols <= low)
        return hide

    def prefix_hidden(self, window: int | None) -> torch.Tensor:
        """(B, M) bool for the prefix columns (tiled decode): True where row b's query does not see them."""
        m = self.prefix_column()
        cols = torch.arange(max(self.prefix), device=self.blocks.device)[None]
        hide = cols >= m
        if window is not None:  # the query is at extended position m + length - 1
            hide |= m + self.lengths[:, None] - 1 - cols >= window
        return hide


@dataclass
class Prefill:
    """One chunk of n > 1 tokens at stream positions [start, start + n) of a row with prefix m."""

    tok_start: int
    n: int
    start: int
    blocks: torch.Tensor  # (nb,) the row's blocks covering [0, start + n)
    prefix: int
    slot: int
    _masks: dict[int | None, torch.Tensor] = field(default_factory=dict)

    def mask(self, window: int | None) -> torch.Tensor:
        """(1, 1, n, m + start + n) bool, causal in extended positions (and within `window`)."""
        if window not in self._masks:
            device = self.blocks.device
            query = self.prefix + self.start + torch.arange(self.n, device=device)[:, None]  # (n, 1)
            keys = torch.arange(self.prefix + self.start + self.n, device=device)[None]  # (1, m + L)
            visible = keys <= query
            if window is not None:
                visible &= query - keys < window
            self._masks[window] = visible[None, None]
        return self._masks[window]


@dataclass
class PagedBatch:
    num_tokens: int
    input_ids: torch.Tensor  # (1, T), 0 at virtual positions
    position_ids: torch.Tensor  # (1, T)
    write_slots: torch.Tensor  # (T,)
    fresh_blocks: torch.Tensor  # blocks whose first position this step writes: zeroed before (kv_cache.py)
    virtual: list[tuple[int, int, int, int]]  # (token index, slot, first virtual position, count)
    decode: Decode | None
    prefills: list[Prefill]
    logit_tokens: list[int]  # packed indices whose logits are returned (plan.py's layout), plan order
    context: TokenContext
    extras: dict[str, Any] = field(default_factory=dict)


def _check_chunk(chunk: SeqChunk, pool: KVPool, v: int, vocab: int) -> None:
    n, end = len(chunk.tokens), chunk.start + len(chunk.tokens)
    where = f"seq {chunk.seq_id} (adapter {chunk.adapter!r})"
    if n == 0 or chunk.start < 0:
        raise ValueError(f"{where}: a chunk needs at least one token and start >= 0 (start={chunk.start}).")
    need = -(-end // pool.block_size)
    if len(chunk.block_table) < need:
        raise ValueError(
            f"{where}: its block table has {len(chunk.block_table)} blocks of {pool.block_size} positions, but "
            f"the chunk reaches stream position {end - 1} ({need} blocks needed); allocate the blocks first."
        )
    bad = [b for b in chunk.block_table[:need] if not RESERVED_BLOCKS <= b < pool.num_blocks]
    if bad:
        raise ValueError(
            f"{where}: block ids {bad[:4]} are outside the pool's blocks {RESERVED_BLOCKS}..{pool.num_blocks - 1} "
            f"(block 0 is the reserved scratch block)."
        )
    for i, tok in enumerate(chunk.tokens):
        p = chunk.start + i
        if (p < v) != (tok == VIRTUAL):
            raise ValueError(
                f"{where}: stream position {p} holds token {tok}, but its adapter opens the stream with {v} "
                f"virtual positions: positions < {v} must be VIRTUAL ({VIRTUAL}) and the others real token ids."
            )
        if tok != VIRTUAL and not 0 <= tok < vocab:
            raise ValueError(f"{where}: token id {tok} is outside the vocabulary (0..{vocab - 1}).")


def build(
    plan: StepPlan,
    pool: KVPool,
    slots: list[int],
    virtual: list[int],
    prefix: list[int],
    vocab: int,
    device: torch.device,
) -> PagedBatch:
    """Per chunk: its adapter's `slots[i]` (-1 base), virtual positions `virtual[i]` and prefix length `prefix[i]`."""
    chunks = plan.chunks
    if not chunks:
        raise ValueError("paged_step needs at least one chunk.")
    seen = [c.seq_id for c in chunks]
    if len(set(seen)) != len(seen):
        raise ValueError(f"a step plan lists every seq_id at most once; got {seen}.")
    bs = pool.block_size
    ids: list[int] = []
    positions: list[int] = []
    writes: list[int] = []
    fresh: list[int] = []
    virt: list[tuple[int, int, int, int]] = []
    logit_tokens: list[int] = []
    dec_rows: list[int] = []
    prefills: list[Prefill] = []
    for i, chunk in enumerate(chunks):
        _check_chunk(chunk, pool, virtual[i], vocab)
        at, n = len(ids), len(chunk.tokens)
        if chunk.start < virtual[i]:
            virt.append((at, slots[i], chunk.start, min(virtual[i], chunk.start + n) - chunk.start))
        ids += [0 if t == VIRTUAL else t for t in chunk.tokens]
        positions += range(prefix[i] + chunk.start, prefix[i] + chunk.start + n)
        table = chunk.block_table
        writes += [table[p // bs] * bs + p % bs for p in range(chunk.start, chunk.start + n)]
        fresh += [table[p // bs] for p in range(-(-chunk.start // bs) * bs, chunk.start + n, bs)]
        if chunk.all_logits:
            logit_tokens += range(at, at + n)
        elif chunk.want_logits:
            logit_tokens.append(at + n - 1)
        if n == 1:
            dec_rows.append(i)
    starts = [0]
    for c in chunks:
        starts.append(starts[-1] + len(c.tokens))
    for i, chunk in enumerate(chunks):
        if len(chunk.tokens) > 1:
            length = chunk.start + len(chunk.tokens)
            blocks = _blocks([chunk.block_table], [length], bs, device)[0]
            prefills.append(Prefill(starts[i], len(chunk.tokens), chunk.start, blocks, prefix[i], slots[i]))
    decode = None
    if dec_rows:
        lengths = [chunks[i].start + 1 for i in dec_rows]
        prefix_slots: dict[int, list[int]] = {}
        for row, i in enumerate(dec_rows):
            if prefix[i]:
                prefix_slots.setdefault(slots[i], []).append(row)
        decode = Decode(
            tokens=torch.tensor([starts[i] for i in dec_rows], dtype=torch.long, device=device),
            blocks=_blocks([chunks[i].block_table for i in dec_rows], lengths, bs, device),
            width=max(lengths),
            lengths=torch.tensor(lengths, dtype=torch.long, device=device),
            prefix=[prefix[i] for i in dec_rows],
            prefix_slots=prefix_slots,
            shortest=min(lengths),
        )
    kept = logit_tokens or [len(ids) - 1]  # the LM head runs on one token at least
    owner = {t: i for i in range(len(chunks)) for t in range(starts[i], starts[i + 1])}
    layouts = {
        len(ids): (list(slots), [len(c.tokens) for c in chunks]),
    }
    per_chunk = [0] * len(chunks)
    for t in kept:
        per_chunk[owner[t]] += 1
    kept_layout = ([slots[i] for i, k in enumerate(per_chunk) if k], [k for k in per_chunk if k])
    if len(kept) in layouts and layouts[len(kept)] != kept_layout:
        raise AssertionError("packed and kept layouts disagree")  # cannot happen: plan order in both
    layouts[len(kept)] = kept_layout
    context = TokenContext(list(slots), layouts=layouts)
    return PagedBatch(
        num_tokens=len(ids),
        input_ids=torch.tensor([ids], dtype=torch.long, device=device),
        position_ids=torch.tensor([positions], dtype=torch.long, device=device),
        write_slots=torch.tensor(writes, dtype=torch.long, device=device),
        fresh_blocks=torch.tensor(fresh, dtype=torch.long, device=device),
        virtual=virt,
        decode=decode,
        prefills=prefills,
        logit_tokens=logit_tokens,
        context=context,
    )


def _blocks(tables: list[list[int]], lengths: list[int], bs: int, device: torch.device) -> torch.Tensor:
    """(R, nb) each row's blocks covering its `lengths[r]` positions, padded with the scratch block 0."""
    nb = -(-max(lengths) // bs)
    out = torch.zeros(len(tables), nb, dtype=torch.long)
    for r, t in enumerate(tables):
        used = t[: -(-lengths[r] // bs)]
        out[r, : len(used)] = torch.tensor(used, dtype=torch.long)
    return out.to(device)
