"""`VirtualTokenCounter.fifo` (the FIFO baseline bench/bench_fairness.py measures VTC against): off by default,
and when set, admission follows arrival order whatever the counters say."""

from __future__ import annotations

import collections
from dataclasses import dataclass

from server.engine.fairness import VirtualTokenCounter


@dataclass
class Item:
    tenant: str | None
    fair_seen: bool = True
    preempted: bool = False


def test_fifo_is_off_by_default_and_admits_in_arrival_order_when_set() -> None:
    vtc = VirtualTokenCounter()
    vtc.charge("flood", prompt_tokens=100)
    waiting = collections.deque([Item("flood"), Item("flood"), Item("quiet")])
    assert not vtc.fifo and vtc.next_index(waiting) == 2  # VTC: the least-served tenant first
    vtc.fifo = True
    assert vtc.next_index(waiting) == 0
