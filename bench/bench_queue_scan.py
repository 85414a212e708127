"""The scheduler's cost per step against the waiting queue's length (issue 17.8, bench/README.md "Work in the
server that grows with the queue"): µs per `Scheduler.schedule` over the test double (tests/server/
test_scheduler.py's `Item`) with 0 / 200 / 1,000 / 10,000 rows queued, best of 5.

  steady: every slot taken (4 rows of 4 tenants run), nothing admitted: the share check each step;
  admit:  4 admissions per step, a flood tenant's backlog with three rival rows arriving behind it each step.

Run from the repository root: PYTHONPATH=$PWD python bench/bench_queue_scan.py
"""

from __future__ import annotations

import collections
import itertools
import time
from typing import Any

from adapters_core.paged.blocks import BlockPool, KVBlocks
from server.engine.fairness import VirtualTokenCounter
from server.engine.scheduler import Scheduler
from tests.server.test_scheduler import item

try:  # the engine's queue; a tree from before it has none
    from server.engine.fairness import TenantQueue as Queue
except ImportError:
    Queue = collections.deque  # type: ignore[misc,assignment]

SIZES = (0, 200, 1000, 10000)


def steady(n: int, steps: int = 300) -> float:
    sched: Scheduler[Any] = Scheduler(
        KVBlocks(BlockPool(64, 4, reserved=1)), VirtualTokenCounter(), max_batch_tokens=8, max_rows=4
    )
    running: list[Any] = []
    waiting = Queue(item(i, [1, 2, 3], 10**6, tenant=f"t{i % 4}") for i in range(4))
    sched.schedule(running, waiting)
    waiting.extend(item(100 + i, [1, 2, 3], 10**6, tenant=f"t{i % 4}") for i in range(n))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(steps):
            for chunk in sched.schedule(running, waiting).chunks:
                chunk.row.seq.computed = chunk.start + chunk.count
                if chunk.last:
                    chunk.row.seq.stream.append(7)
        best = min(best, (time.perf_counter() - start) / steps * 1e6)
    return best


def admit(n: int, steps: int = 200) -> float:
    best = float("inf")
    for _ in range(5):
        sched: Scheduler[Any] = Scheduler(
            KVBlocks(BlockPool(64, 4, reserved=1)), VirtualTokenCounter(), max_batch_tokens=64, max_rows=4
        )
        ids = itertools.count()
        running: list[Any] = []
        waiting = Queue(item(next(ids), [1, 2, 3], 1, tenant="A") for _ in range(n))
        total = 0.0
        for _ in range(steps):
            waiting.extend(item(next(ids), [1, 2, 3], 1, tenant=t) for t in "AABCD")
            start = time.perf_counter()
            sched.schedule(running, waiting)
            total += time.perf_counter() - start
            for row in running:  # they finish
                sched.blocks.free(row.seq.seq_id)
            running.clear()
            while len(waiting) > n + 1:
                waiting.pop()
        best = min(best, total / steps * 1e6)
    return best


if __name__ == "__main__":
    for name, bench in (("steady", steady), ("admit", admit)):
        print(name, " / ".join(f"{bench(n):.0f}" for n in SIZES), "µs per schedule at", SIZES, "queued")
