"""`VirtualTokenCounter.notice` (engine/fairness.py) looks only at the rows that arrived since its last call, so a
step's cost does not grow with the backlog a flooding adapter leaves in the queue; the counter lifting it does
(a tenant becoming active starts at the least-served active tenant's counter) is unchanged."""

from __future__ import annotations

import collections

from server.engine.fairness import VirtualTokenCounter


class Waiting:
    """A queued row that counts how often the fair queue reads it."""

    reads = 0

    def __init__(self, tenant: str, seen: bool = True) -> None:
        self._tenant, self._seen = tenant, seen
        self.preempted = False

    @property
    def tenant(self) -> str:
        Waiting.reads += 1
        return self._tenant

    @property
    def fair_seen(self) -> bool:
        Waiting.reads += 1
        return self._seen

    @fair_seen.setter
    def fair_seen(self, value: bool) -> None:
        self._seen = value


def test_notice_reads_the_new_arrivals_not_the_backlog() -> None:
    vtc = VirtualTokenCounter()
    vtc.counters.update({"flood": 50.0, "b": 10.0})
    waiting = collections.deque(Waiting("flood") for _ in range(1000))
    waiting.append(Waiting("flood", seen=False))  # a flood row arrives while the flood runs: nothing to lift
    Waiting.reads = 0
    vtc.notice(waiting, ["flood", "b"])
    assert waiting[-1]._seen
    assert Waiting.reads <= 10, f"notice read the queue {Waiting.reads} times for one arrival"
    assert vtc.counters == {"flood": 50.0, "b": 10.0}
    Waiting.reads = 0
    vtc.notice(waiting, ["flood", "b"])  # nothing new
    assert Waiting.reads <= 1


def test_a_tenant_becoming_active_is_lifted_to_the_least_served_active_one_and_only_then() -> None:
    vtc = VirtualTokenCounter()
    vtc.counters.update({"a": 30.0, "b": 12.0, "c": 5.0})
    # a runs; b only waits (seen: active); c has been idle; d is new
    waiting = collections.deque([Waiting("b"), Waiting("c", seen=False), Waiting("d", seen=False)])
    waiting.append(Waiting("c", seen=False))  # c's second arrival: active by then, not lifted again
    vtc.notice(waiting, ["a"])
    assert vtc.counters["c"] == 12.0  # lifted to b's, the least served of {a, b}
    assert vtc.counters["d"] == 12.0  # lifted to min over {a, b, c}
    assert all(item._seen for item in waiting)
    # b becomes idle; its counter stays; a's new row while a runs is not lifted
    vtc.counters["a"] = 40.0
    waiting = collections.deque([Waiting("a", seen=False)])
    vtc.notice(waiting, ["a"])
    assert vtc.counters["a"] == 40.0
