"""The engine's waiting queue (`TenantQueue`, engine/fairness.py) keeps its rows per tenant at every mutation, so
a step's fair-share and admission choices read O(tenants) rows, not a flood's backlog; and the engine looks
through its queue for cancelled rows only after a cancel (`RequestHandle.on_cancel`). These tests count reads
(no timing) and check the kept counts against a recount after random mutations."""

from __future__ import annotations

import asyncio
import collections
import random
from types import SimpleNamespace
from typing import Any

import pytest

from adapters_core.paged.blocks import BlockPool, KVBlocks
from server.engine.engine import Engine
from server.engine.fairness import TenantQueue, VirtualTokenCounter
from server.engine.scheduler import Scheduler, SeqState
from server.engine.types import RequestHandle


class Counted:
    """A queued row (the scheduler's view) that counts how often its tenant is read."""

    reads = 0

    def __init__(self, seq_id: int, tenant: str, preempted: bool = False) -> None:
        self.seq = SeqState(seq_id, tenant, "", [1, 2, 3], prompt_len=3)
        self._tenant = tenant
        self.fair_seen = True
        self.preempted = preempted

    @property
    def tenant(self) -> str:
        Counted.reads += 1
        return self._tenant


def scheduler(max_rows: int) -> Scheduler[Any]:
    return Scheduler(
        KVBlocks(BlockPool(64, 4, reserved=1)), VirtualTokenCounter(), max_batch_tokens=64, max_rows=max_rows
    )


def test_a_step_behind_a_long_queue_reads_its_tenants_not_its_rows() -> None:
    """Every slot taken, 1,000 rows of four tenants waiting: the max-min share check reads O(tenants) rows."""
    sched = scheduler(max_rows=4)
    running: list[Any] = []
    waiting = TenantQueue(Counted(i, "abcd"[i]) for i in range(4))
    sched.schedule(running, waiting)  # one row of each tenant runs
    waiting.extend(Counted(10 + i, "abcd"[i % 4]) for i in range(1000))
    Counted.reads = 0
    out = sched.schedule(running, waiting)
    assert not out.admitted and not out.preempted and len(waiting) == 1000
    assert Counted.reads <= 40, f"one step read the queue's tenants {Counted.reads} times"


def test_admission_behind_a_flood_reads_the_tenants_heads() -> None:
    """A rival's row queued behind 1,000 flood rows is admitted first (it runs the fewest rows), reading each
    tenant's first row, not the flood's backlog; then the flood's oldest row."""
    sched = scheduler(max_rows=3)
    running: list[Any] = [Counted(0, "flood")]
    sched.blocks.admit(0, "", running[0].seq.stream, 3)
    waiting = TenantQueue(Counted(1 + i, "flood") for i in range(1000))
    rival = Counted(5000, "rival")
    waiting.append(rival)
    Counted.reads = 0
    out = sched.schedule(running, waiting)
    assert out.admitted[0] is rival and out.admitted[1].seq.seq_id == 1  # the rival, then the flood's oldest
    assert waiting.tenants == {"flood": 999}
    assert Counted.reads <= 60, f"two admissions read {Counted.reads} tenants"


def test_preempted_rows_go_first_from_a_tenant_queue() -> None:
    vtc = VirtualTokenCounter()
    vtc.counters.update({"a": 100.0, "b": 0.0})
    waiting: TenantQueue[Any] = TenantQueue([Counted(1, "b"), Counted(2, "b")])
    waiting.appendleft(Counted(3, "a", preempted=True))
    assert vtc.next_index(waiting, {}) == 0 and waiting.preempted == 1
    del waiting[0]
    assert waiting.preempted == 0 and vtc.next_index(waiting, {}) == 0


@pytest.mark.parametrize("seed", range(20))
def test_kept_counts_and_choices_equal_a_recount_after_random_mutations(seed: int) -> None:
    """Random appends, front insertions (preempted or not), deletions anywhere, pops and clears: the kept
    per-tenant counts, preempted count and heads equal a recount, and `next_index` chooses as over a plain
    deque (the reference: it reads every row)."""
    rng = random.Random(seed)
    queue: TenantQueue[Any] = TenantQueue()
    ids = iter(range(10**6))
    vtc = VirtualTokenCounter()
    for _ in range(400):
        op = rng.random()
        if op < 0.4:
            queue.append(Counted(next(ids), rng.choice("abcde")))
        elif op < 0.55:
            queue.appendleft(Counted(next(ids), rng.choice("abcde"), preempted=rng.random() < 0.5))
        elif op < 0.85 and queue:
            del queue[rng.randrange(len(queue))]
        elif op < 0.9 and queue:
            (queue.pop if rng.random() < 0.5 else queue.popleft)()
        elif op < 0.92:
            queue.clear()
        elif op < 0.95:
            queue = TenantQueue(row for row in queue if rng.random() < 0.8)  # as _drop_cancelled rebuilds it
        assert queue.tenants == collections.Counter(row._tenant for row in queue)
        assert queue.preempted == sum(row.preempted for row in queue)
        firsts = {}
        for row in queue:
            firsts.setdefault(row._tenant, row)
        assert {row._tenant: row for _, row in queue.heads()} == firsts
        if queue:
            for tenant in "abcde":
                vtc.counters[tenant] = float(rng.randrange(3))
            rows = {t: rng.randrange(3) for t in "abcde"}
            assert vtc.next_index(queue, rows) == vtc.next_index(collections.deque(queue), rows)


def test_a_tenant_queue_refuses_to_reorder() -> None:
    queue: TenantQueue[Any] = TenantQueue([Counted(1, "a"), Counted(2, "b")])
    with pytest.raises(TypeError, match="ends only"):
        queue.rotate(1)
    with pytest.raises(TypeError, match="ends only"):
        queue.insert(1, Counted(3, "c"))


def test_the_queue_is_read_for_cancelled_rows_only_after_a_cancel_and_the_row_leaves_at_the_next_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1,000 queued rows: steps with nothing cancelled read no row's flag; a cancel in the middle of the queue
    takes that row (alone) out at the next step, which then goes back to reading nothing."""
    loop = asyncio.new_event_loop()  # never run: nobody reads the events
    left: list[Any] = []
    engine = SimpleNamespace(_cancels=0, _cancels_seen=0, _leave=left.append)
    handles = [RequestHandle(loop, on_cancel=lambda: Engine._note_cancel(engine)) for _ in range(1000)]
    rows = [SimpleNamespace(handle=h, tenant="t", preempted=False) for h in handles]
    engine._waiting = TenantQueue(rows)
    reads: collections.Counter[int] = collections.Counter()
    flag = RequestHandle.cancelled

    def counting(self: RequestHandle) -> bool:
        reads[self.id] += 1
        return flag.fget(self)  # type: ignore[misc]

    monkeypatch.setattr(RequestHandle, "cancelled", property(counting, flag.fset))
    for _ in range(3):
        Engine._drop_cancelled(engine)  # type: ignore[arg-type]
    assert not reads, f"steps with nothing cancelled read {sum(reads.values())} flags"
    handles[500].cancel()
    Engine._drop_cancelled(engine)  # type: ignore[arg-type]
    assert left == [rows[500]] and len(engine._waiting) == 999
    assert all(row is not rows[500] for row in engine._waiting)
    assert engine._waiting.tenants == {"t": 999}
    reads.clear()
    Engine._drop_cancelled(engine)  # type: ignore[arg-type]
    assert not reads
    loop.close()


def test_a_row_cancelled_before_it_was_queued_is_dropped_at_the_next_step() -> None:
    """A sibling row waits outside the queue for its leader; its cancel is counted (and looked for) before the
    row enters the queue: entering, it is counted again, so the next step still drops it."""
    loop = asyncio.new_event_loop()
    left: list[Any] = []
    engine = SimpleNamespace(_cancels=0, _cancels_seen=0, _leave=left.append, _waiting=TenantQueue())
    handle = RequestHandle(loop, on_cancel=lambda: Engine._note_cancel(engine))  # type: ignore[arg-type]
    outside = SimpleNamespace(handle=handle, tenant="t", preempted=False)
    handle.cancel()
    Engine._drop_cancelled(engine)  # type: ignore[arg-type]  # the cancel is seen; the row is not queued yet
    Engine._enqueue(engine, [outside])  # type: ignore[arg-type]
    Engine._drop_cancelled(engine)  # type: ignore[arg-type]
    assert left == [outside] and not engine._waiting
    loop.close()
