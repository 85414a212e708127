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
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

PROMPT_WEIGHT = 1.0
OUTPUT_WEIGHT = 2.0


class Queued(Protocol):
    """What the fair queue needs of a waiting row."""

    fair_seen: bool  # the counter has noticed its arrival
    preempted: bool  # it ran before and waits to be recomputed: it goes first

    @property
    def tenant(self) -> str | None: ...


T = TypeVar("T", bound=Queued)


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
        whole queue is read only when one of them belongs to a tenant with no running row (it may be waking).
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
        smallest counter (ties: the oldest row)."""
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
