"""Which waiting request is admitted next: S-LoRA's virtual token counter (VTC), so that no adapter starves.

Sheng et al., "Fairness in Serving Large Language Models" (OSDI 2024; the VTC scheduler S-LoRA ships): every
tenant (here: an adapter's public name, None = the base model) has a counter of the service it received,
in weighted tokens (a prompt token costs 1, a generated token 2, as in the paper's default weights). The
next request admitted is the oldest waiting one of the tenant with the smallest counter. A tenant that becomes
active (a request arrives while it has nothing waiting or running) has its counter lifted to the smallest
counter of the active tenants, so idle time is not banked into a burst that starves the others.

Worked example: adapter A floods the queue with 20 requests, then B and C send 2 each, all 10-token prompts.
All counters start at 0; ties go to the oldest request. Admission order: A B C A B C A A ... (FIFO would admit
all 20 of A first). Each admission charges 10 to its tenant; generated tokens then charge 2 each.

On the paged path the scheduler also shares the row slots max-min between tenants (engine/scheduler.py, step
0): admission serves the tenants running the fewest rows first (`next_index` given the rows per tenant), then
the counter decides; a flood holding every row gives one up as soon as another tenant's request waits. VTC
alone orders the queue but a new request still waits for a row to finish (bench/README.md, "Fairness").

Rows preempted by the paged scheduler for lack of KV blocks were admitted before: they wait at the front of the
queue and go first.
The counter lives in the engine thread (no locking): arrivals are noticed at the next schedule.

The engine's queue is a `TenantQueue`: a deque that keeps its rows per tenant and its preempted rows counted at
every mutation, so a step's share and admission choices read O(tenants) counts, not the whole backlog (a
flood can leave 10,000 rows queued, `--max-queued-requests`).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, Protocol, SupportsIndex, TypeVar

PROMPT_WEIGHT = 1.0
OUTPUT_WEIGHT = 2.0


class Queued(Protocol):
    """What the fair queue needs of a waiting row."""

    fair_seen: bool  # the counter has noticed its arrival
    preempted: bool  # it ran before and waits to be recomputed: it goes first

    @property
    def tenant(self) -> str | None: ...


T = TypeVar("T", bound=Queued)


class TenantQueue(collections.deque[T], Generic[T]):
    """The waiting queue, which also keeps, at every mutation, each tenant's rows in queue order (`heads`: each
    tenant's first row) and how many rows wait per tenant (`tenants`, only tenants with some) and preempted
    (`preempted`), so the fair queue need not read a long backlog each step.

    Queue order is kept as a number per row: appended rows count up, rows put at the front count down. Only the
    deque's ends take rows (no insert, rotate or item assignment). Invariant (the scheduler keeps it): a row's
    `tenant` and `preempted` do not change while it waits (the scheduler sets `preempted` before putting a row
    back and clears it after taking it out).
    """

    def __init__(self, rows: Iterable[T] = ()) -> None:
        super().__init__()
        self.tenants: collections.Counter[str | None] = collections.Counter()
        self.preempted = 0
        self._of: dict[str | None, collections.deque[tuple[int, T]]] = {}  # tenant -> (order, row), in order
        self._front, self._back = 0, 0  # the order numbers at the queue's ends
        self.extend(rows)

    def heads(self) -> Iterator[tuple[int, T]]:
        """Each waiting tenant's first row, with its place in the queue's order (smaller: nearer the front)."""
        return (rows[0] for rows in self._of.values())

    def _add(self, row: T, front: bool) -> None:
        rows = self._of.setdefault(row.tenant, collections.deque())
        if front:
            self._front -= 1
            rows.appendleft((self._front, row))
        else:
            self._back += 1
            rows.append((self._back, row))
        self.tenants[row.tenant] += 1
        self.preempted += row.preempted

    def _drop(self, row: T) -> None:
        rows = self._of[row.tenant]
        if rows[0][1] is row:
            rows.popleft()
        elif rows[-1][1] is row:
            rows.pop()
        else:  # a row from the middle of its tenant's (a cancelled one is dropped by rebuilding the queue)
            del rows[next(i for i, (_, r) in enumerate(rows) if r is row)]
        if not rows:
            del self._of[row.tenant]
        self.tenants[row.tenant] -= 1
        if not self.tenants[row.tenant]:
            del self.tenants[row.tenant]
        self.preempted -= row.preempted

    def append(self, row: T) -> None:
        super().append(row)
        self._add(row, front=False)

    def appendleft(self, row: T) -> None:
        super().appendleft(row)
        self._add(row, front=True)

    def extend(self, rows: Iterable[T]) -> None:
        for row in rows:
            self.append(row)

    def extendleft(self, rows: Iterable[T]) -> None:
        for row in rows:
            self.appendleft(row)

    def pop(self) -> T:  # type: ignore[override]
        row = super().pop()
        self._drop(row)
        return row

    def popleft(self) -> T:
        row = super().popleft()
        self._drop(row)
        return row

    def remove(self, row: T) -> None:
        self.__delitem__(self.index(row))

    def __delitem__(self, i: SupportsIndex) -> None:  # type: ignore[override]
        row = self[i]
        super().__delitem__(i)
        self._drop(row)

    def clear(self) -> None:
        super().clear()
        self.tenants.clear()
        self._of.clear()
        self.preempted = 0

    def _reorder(self, *args: Any) -> None:
        raise TypeError("a TenantQueue takes rows at its ends only (it keeps their order per tenant)")

    insert = rotate = reverse = __setitem__ = __iadd__ = _reorder  # type: ignore[assignment]


class VirtualTokenCounter:
    """Per-tenant counters of weighted tokens served, and the admission choice they make."""

    def __init__(self) -> None:
        self.counters: dict[str | None, float] = collections.defaultdict(float)
        self.fifo = False  # bench/bench_fairness.py only: admit in arrival order (the baseline VTC is measured against)

    def notice(self, waiting: Sequence[T], running: Iterable[str | None]) -> None:
        """Lift the counter of each tenant that became active since the last call (arrival order).
        `running`: the tenants of the running rows.

        Only the rows that arrived since the last call are read, so a step costs the same whatever the backlog:
        they are the queue's tail (arrivals are appended; rows put back at the front were seen before). The
        whole queue is read only when one of them belongs to a tenant with no running row (it may be waking),
        and not even then on a `TenantQueue` (its counts say which tenants wait).
        """
        new = []
        for item in reversed(waiting):
            if item.fair_seen:
                break
            new.append(item)
        if not new:
            return
        new.reverse()
        active = set(running)
        if any(item.tenant not in active for item in new):
            if isinstance(
                waiting, TenantQueue
            ):  # the seen rows' tenants: the queue's counts less the new rows'
                seen = collections.Counter(waiting.tenants)
                seen.subtract(item.tenant for item in new)
                active |= {t for t, n in seen.items() if n > 0}
            else:
                active |= {item.tenant for item in waiting if item.fair_seen}
        for item in new:
            item.fair_seen = True
            if item.tenant not in active and active:
                floor = min(self.counters[t] for t in active)
                self.counters[item.tenant] = max(self.counters[item.tenant], floor)
            active.add(item.tenant)

    def next_index(
        self, waiting: collections.deque[T], running: Mapping[str | None, int] | None = None
    ) -> int:
        """Index in `waiting` of the row to admit next: a preempted row first; else, among the tenants running
        the fewest rows (`running`: rows per tenant, none if not given), the oldest row of the tenant with the
        smallest counter (ties: the oldest row).

        On a `TenantQueue` only the tenants' first rows are read (and, when it holds preempted rows, the queue
        up to the first of them)."""
        if self.fifo or not waiting:
            return 0
        if isinstance(waiting, TenantQueue):
            if waiting.preempted:  # they wait at the front (put back there, nothing passes them)
                return next(i for i, item in enumerate(waiting) if item.preempted)
            rows = running or {}
            *_, row = min(
                (rows.get(r.tenant, 0), self.counters[r.tenant], order, r) for order, r in waiting.heads()
            )
            return waiting.index(row)  # rows compare by identity: a scan in C, no Python per row
        best, best_key = 0, None
        for i, item in enumerate(waiting):
            if item.preempted or self.fifo:
                return i
            key = ((running or {}).get(item.tenant, 0), self.counters[item.tenant])
            if best_key is None or key < best_key:
                best, best_key = i, key
        return best

    def charge(self, tenant: str | None, prompt_tokens: int = 0, output_tokens: int = 0) -> None:
        self.counters[tenant] += PROMPT_WEIGHT * prompt_tokens + OUTPUT_WEIGHT * output_tokens
