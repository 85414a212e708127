"""bench/steplog.py: the step log bench_fairness.py reads from the server (what it records, how it sums up)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from bench.steplog import EngineLog, StepLog


def test_breakdown_splits_wait_and_run_and_counts_the_rows_of_the_steps_they_ran_in() -> None:
    # (end, rows, tokens, wall, cpu, forward, run queue)
    steps = [
        (t, rows, rows, 0.01, 0.008, 0.006, 0.001) for t, rows in [(1.0, 1), (2.0, 4), (3.0, 2), (4.0, 4)]
    ]
    requests = [("a", 0.5, 1.5, 3.5), ("b", 0.0, 2.0, 4.0), ("flood", 0.0, 0.1, 9.0)]
    wait, run, rows = StepLog(steps, requests).breakdown(["a", "b"])
    assert wait == pytest.approx(1.5)  # median of 1.0 and 2.0
    assert run == pytest.approx(2.0)
    # a ran in the steps ending at 2.0 and 3.0 (4, 2 rows), b in those at 3.0 and 4.0 (2, 4 rows)
    assert rows == pytest.approx(3.0)


def test_decode_steps_leave_out_the_steps_with_a_prefill_and_waits_split_core_from_blocked() -> None:
    log = StepLog(
        [
            (1.0, 1, 1, 0.010, 0.008, 0.006, 0.001),
            (2.0, 1, 17, 0.030, 0.020, 0.015, 0.004),  # a prefill chunk beside the decode
            (3.0, 4, 4, 0.014, 0.010, 0.008, 0.003),
            (4.0, 1, 1, 0.012, 0.010, 0.006, 0.000),
        ]
    )
    decode = log.decode_steps()
    assert set(decode) == {1, 4}
    assert decode[1] == pytest.approx((11.0, 9.0))
    assert decode[4] == pytest.approx((14.0, 10.0))
    assert log.prefill_steps() == pytest.approx((0.25, 30.0, 20.0))
    core, blocked = log.waits_ms()
    assert core == pytest.approx(2.0)  # (1 + 4 + 3 + 0) / 4
    assert blocked == pytest.approx(((10 - 8 - 1) + (30 - 20 - 4) + (14 - 10 - 3) + (12 - 10)) / 4)
    assert StepLog.from_json(log.to_json()).steps == log.steps


@dataclass
class Handle:
    submitted_at: float = 0.25
    first_token_at: float | None = 0.5


@dataclass
class FakeRow:
    tenant: str
    finish_reason: str | None = None
    handle: Handle = field(default_factory=Handle)


@dataclass
class Schedule:
    chunks: list[int]
    tokens: int


class FakeEngine:
    """The three methods EngineLog wraps, calling each other as the engine does (through `self`)."""

    def __init__(self) -> None:
        self.emitted: list[FakeRow] = []

    def _paged_step(self, batch: Any) -> None:
        rows, _ = self._forward_paged(batch, Schedule(chunks=[1, 2], tokens=18))
        for row in rows:
            self._emit_row(row, None, 7.0)

    def _forward_paged(self, batch: Any, schedule: Schedule) -> tuple[list[FakeRow], None]:
        return batch, None

    def _emit_row(self, row: FakeRow, pick: Any, now: float) -> None:
        self.emitted.append(row)


def test_engine_log_records_each_step_and_each_finished_request_and_still_runs_the_engine() -> None:
    engine = FakeEngine()
    log = EngineLog(engine)
    engine._paged_step([FakeRow("a"), FakeRow("b", finish_reason="length")])
    assert [row.tenant for row in engine.emitted] == ["a", "b"]  # the wrapped methods still ran
    (step,) = log.steps
    assert step[1:3] == (2, 18)  # rows sampled, tokens
    assert step[3] >= step[5] >= 0 and step[4] >= 0 and step[6] >= 0
    assert log.requests == [("b", 0.25, 0.5, 7.0)]
    log.clear()
    assert log.steps == [] and log.requests == []
