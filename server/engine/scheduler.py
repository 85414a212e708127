"""The paged engine's scheduler: per step, which rows run how many tokens, within a token budget and the KV
blocks there are. It speaks in tokens and blocks, not rows (vLLM v1's scheduler is the model).

A generating row's *stream* is `[v virtual positions][prompt][generated]` (adapters_core/paged/plan.py);
`computed` of its positions hold keys and values in the cache. A row that asks for its prompt's logprobs
(`SeqState.prompt_logits`) takes no prefix-cache hits and its prompt chunks return every position's logits. A row with one pending position decodes; a row
with more is (re)prefilling. Each step, with `max_batch_tokens` tokens to spend:

0. fair shares of the row slots (max-min, by tenant = adapter): when every slot is taken and a tenant with a
   waiting row runs at least two rows fewer than the tenant running the most, that tenant's most recently
   admitted row is preempted (as in 1., but it waits its tenant's turn instead of going first), so a flooding
   adapter holding every row gives one up the step another adapter's request arrives rather than when one of
   its rows happens to finish. A one-row imbalance is left alone (not worth a recompute), and a tenant whose
   rivals have nothing waiting keeps every slot (work-conserving);
1. decodes: every running row with one pending position gets its token, growing its block table by a
   block when it crosses a block boundary. When no block is free, the most recently admitted row not yet
   scheduled this step is *preempted*: its blocks are freed and it goes back to the front of the queue, to be
   recomputed later (prompt + what it generated so far, re-prefilled; its sampler state is kept, so it goes
   on exactly where it was);
2. then prefill chunks of running rows that are still prefilling (chunked prefill: a long prompt is spread
   over steps, so the decoding rows keep their pace). While rows decode in the step, prefill is capped at
   `prefill_while_decoding` tokens (`--max-prefill-tokens-while-decoding`, Sarathi-Serve's stall-free
   batching): on a CPU a step's time grows with its tokens, and an uncapped 500-token chunk would stall the
   decoding rows' next token several-fold;
3. then admissions, while budget and row slots remain: the next row by the fair queue (engine/fairness.py:
   preempted rows first, then the tenants running the fewest rows, then the least-served adapter). A row is
   admitted only if blocks for its whole current stream can be had (cached prefix blocks are reused,
   adapters_core/paged/blocks.py), plus its `reserved_blocks` (an encoder-decoder row's encoder keys/values,
   kept by the model outside the pool but charged to it: held while the row runs, freed with its blocks); if
   the chosen row does not fit, admission stops for this step rather than let later rows pass it, so a long
   prompt is not starved by short ones.

Running rows are capped at min(max_rows, max_batch_tokens), so every decoding row gets its token every step.

Worked example (budget 8, block_size 4): rows R1, R2 decoding; a 13-token prompt P arrives. Step 1: R1, R2 one
token each, P's first 6 tokens (P holds 4 blocks from admission). Step 2: R1, R2, P's next 6. Step 3: R1, R2
and P's last token, with logits: P samples its first token. No step holds more than 8 tokens.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from adapters_core.paged.blocks import KVBlocks

from .fairness import Queued, TenantQueue, VirtualTokenCounter


@dataclass
class SeqState:
    """A generating row as the paged scheduler sees it.

    `stream` is the row's stream (VIRTUAL placeholders, prompt, generated tokens; the engine appends each
    sampled token); `computed` leading positions hold keys and values; `prompt_len` positions are prompt
    (virtual included); `charged` leading positions were counted by the fair queue (recomputed ones are not
    counted again).
    """

    seq_id: int
    adapter: str | None  # the model-side name (MultiAdapterModel name; None = base)
    adapter_key: str  # the adapter version's content hash ("" = base): the prefix cache's key
    stream: list[int]
    prompt_len: int
    computed: int = 0
    charged: int = 0
    preemptions: int = 0
    prompt_logits: bool = False  # the prompt's logits are still wanted: no prefix-cache hits, every logit
    # Blocks held beside the stream's while the row runs (taken at admission, freed with its blocks): what the
    # model keeps for it outside the pool, charged to the pool (an encoder-decoder row's encoder keys/values).
    reserved_blocks: int = 0

    @property
    def pending(self) -> int:
        """Positions still to compute before the row's next token can be sampled."""
        return len(self.stream) - self.computed


class Scheduled(Queued, Protocol):
    seq: SeqState


R = TypeVar("R", bound=Scheduled)


@dataclass(frozen=True)
class Chunk(Generic[R]):
    """`count` positions of `row`'s stream from `start` run this step; `last`: they end its stream (the
    step returns logits for it)."""

    row: R
    start: int
    count: int

    @property
    def last(self) -> bool:
        return self.start + self.count == len(self.row.seq.stream)


@dataclass
class StepSchedule(Generic[R]):
    """One step's work. `admitted` rows joined `running`; `preempted` rows left it for the queue's front;
    `unfit` rows can never get their blocks (the engine fails them)."""

    chunks: list[Chunk[R]] = field(default_factory=list)
    admitted: list[R] = field(default_factory=list)
    preempted: list[R] = field(default_factory=list)
    unfit: list[R] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(c.count for c in self.chunks)


class Scheduler(Generic[R]):
    """Decides each step's chunks (module docstring); owns nothing but the decisions: `blocks` and the
    fair queue's counters are shared with the engine."""

    def __init__(
        self,
        blocks: KVBlocks,
        fairness: VirtualTokenCounter,
        *,
        max_batch_tokens: int,
        max_rows: int,
        prefill_while_decoding: int | None = None,
    ):
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be at least 1, not {max_batch_tokens}")
        if prefill_while_decoding is not None and prefill_while_decoding < 1:
            raise ValueError(f"prefill_while_decoding must be at least 1, not {prefill_while_decoding}")
        self.prefill_while_decoding = prefill_while_decoding
        self.blocks = blocks
        self.fairness = fairness
        self.max_batch_tokens = max_batch_tokens
        self.max_rows = max(1, min(max_rows, max_batch_tokens))

    def schedule(self, running: list[R], waiting: collections.deque[R]) -> StepSchedule[R]:
        """Plan one step. Mutates `running` (preempted rows leave, admitted rows join at the end) and
        `waiting` (admitted rows leave, preempted rows enter at the front); block tables grow to cover every
        chunk. Rows in `running` hold blocks; rows in `waiting` hold none."""
        out: StepSchedule[R] = StepSchedule()
        self.fairness.notice(waiting, (row.tenant for row in running))
        if not self.fairness.fifo:
            self._share_rows(running, waiting, out)
        rows_of = collections.Counter(row.tenant for row in running)
        budget = self.max_batch_tokens
        scheduled: set[int] = set()
        for row in list(running):
            if budget == 0:
                break
            if row.preempted or row.seq.pending != 1:
                continue
            if not self._grow(row, running, waiting, scheduled, out):
                continue  # it was preempted itself
            budget -= self._add(out, row, 1, scheduled)
        if (
            out.chunks and self.prefill_while_decoding is not None
        ):  # rows decode: bound the prefill beside them
            budget = min(budget, self.prefill_while_decoding)
        for row in running:
            if budget == 0:
                break
            if row.seq.seq_id not in scheduled and row.seq.pending > 1:
                budget -= self._add(out, row, min(row.seq.pending, budget), scheduled)
        while waiting and budget > 0 and len(running) < self.max_rows:
            i = self.fairness.next_index(waiting, rows_of)
            row = waiting[i]
            seq = row.seq
            cached = self.blocks.admit(
                seq.seq_id,
                seq.adapter_key,
                seq.stream,
                len(seq.stream),
                reuse=not seq.prompt_logits,
                extra=seq.reserved_blocks,
            )
            if cached is None:
                if not running:  # even an empty pool cannot hold it: it would wait forever
                    del waiting[i]
                    out.unfit.append(row)
                    continue
                break  # it waits for blocks; nobody passes it
            del waiting[i]
            row.preempted = False
            seq.computed = cached
            running.append(row)
            rows_of[row.tenant] += 1
            out.admitted.append(row)
            budget -= self._add(out, row, min(seq.pending, budget), scheduled)
        return out

    def _share_rows(self, running: list[R], waiting: collections.deque[R], out: StepSchedule[R]) -> None:
        """Fair shares of the row slots (max-min): while every slot is taken and a tenant with a waiting row
        runs at least two rows fewer than the tenant running the most, that tenant's most recently admitted row
        is preempted, so the waiting one is admitted this step instead of when a row happens to finish.
        Admission (`next_index` given the rows per tenant) then serves the tenants running the fewest rows.
        Simulated admission by admission: as many preemptions as the waiting tenants need, no more. A lone
        tenant, or one whose rivals have nothing waiting, keeps every slot (work-conserving)."""
        counters = self.fairness.counters
        rows_of = collections.Counter(row.tenant for row in running)
        # the tenants with rows waiting: kept by the engine's TenantQueue (no scan of a long backlog)
        wanting = (
            collections.Counter(waiting.tenants)
            if isinstance(waiting, TenantQueue)
            else collections.Counter(row.tenant for row in waiting)
        )
        free = self.max_rows - len(running)
        while +wanting:
            taker = min(+wanting, key=lambda t: (rows_of[t], counters[t]))
            if free == 0:
                most = max(rows_of, key=lambda t: (rows_of[t], counters[t]))
                if rows_of[most] < rows_of[taker] + 2:
                    return
                victim = next(r for r in reversed(running) if r.tenant == most)
                self._preempt(victim, running, waiting, out, first=False)
                rows_of[most] -= 1
                wanting[most] += 1
                free += 1
            rows_of[taker] += 1
            wanting[taker] -= 1
            free -= 1

    def _grow(
        self,
        row: R,
        running: list[R],
        waiting: collections.deque[R],
        scheduled: set[int],
        out: StepSchedule[R],
    ) -> bool:
        """Blocks for the row's decode position, preempting from the back of `running` while none is free.
        False if the row itself had to be preempted."""
        seq = row.seq
        while not self.blocks.grow(seq.seq_id, len(seq.stream)):
            victim = next(r for r in reversed(running) if r.seq.seq_id not in scheduled)
            self._preempt(victim, running, waiting, out)
            if victim is row:
                return False
        return True

    def _preempt(
        self,
        row: R,
        running: list[R],
        waiting: collections.deque[R],
        out: StepSchedule[R],
        *,
        first: bool = True,
    ) -> None:
        """Free the row's blocks and queue it to be recomputed. `first`: it goes before every other waiting row
        (blocks ran out); else it waits its tenant's turn in the fair order, as its tenant's oldest row."""
        self.blocks.free(row.seq.seq_id)
        row.seq.computed = 0
        row.seq.preemptions += 1
        row.preempted = first
        del running[next(i for i, r in enumerate(running) if r is row)]
        waiting.appendleft(row)  # victims leave newest first: the oldest ends up at the front
        out.preempted.append(row)

    def _add(self, out: StepSchedule[R], row: R, count: int, scheduled: set[int]) -> int:
        seq = row.seq
        out.chunks.append(Chunk(row, seq.computed, count))
        scheduled.add(seq.seq_id)
        self._charge(row, seq.computed, count)
        return count

    def _charge(self, row: R, start: int, count: int) -> None:
        """Count positions [start, start + count) not counted before: prompt positions at the prompt weight,
        generated ones at the output weight."""
        seq = row.seq
        lo, hi = max(start, seq.charged), start + count
        if hi <= lo:
            return
        prompt = max(0, min(hi, seq.prompt_len) - lo)
        self.fairness.charge(row.tenant, prompt_tokens=prompt, output_tokens=hi - lo - prompt)
        seq.charged = hi
