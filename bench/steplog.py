"""What the engine did, step by step, for bench/bench_fairness.py: recorded by hooks on the engine's step
(`EngineLog`, in the server's process) and read as plain data (`StepLog`, on either side of the HTTP route of
bench/fairness_server.py).

A step is logged as (end, rows sampled, tokens, wall, engine-thread CPU, forward wall, engine-thread run-queue
seconds): `rows sampled` are the rows whose stream the step completed, `tokens` every position it computed (a
decode-only step has tokens == rows). Wall against CPU time tells a step that computed longer from one whose
thread waited; of the wait, the run-queue time (Linux schedstat: runnable, waiting for a core) is the other
processes' share, the rest is the thread blocked: on the GIL (the server's event loop thread holds it) or on a
lock. A finished request is logged as (adapter, submitted, first token, finished).
Times are the server process's `time.perf_counter()` seconds.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

Step = tuple[float, int, int, float, float, float, float]
Request = tuple[str | None, float, float, float]


@dataclass
class StepLog:
    steps: list[Step] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def clear(self) -> None:
        self.steps.clear()
        self.requests.clear()

    def copy(self) -> StepLog:
        return StepLog(list(self.steps), list(self.requests))

    def to_json(self) -> dict[str, list[Any]]:
        return {"steps": list(self.steps), "requests": list(self.requests)}

    @classmethod
    def from_json(cls, data: dict[str, list[Any]]) -> StepLog:
        return cls([tuple(s) for s in data["steps"]], [tuple(r) for r in data["requests"]])  # type: ignore[misc]

    def breakdown(self, names: list[str]) -> tuple[float, float, float]:
        """Of `names`' requests: median seconds from submit to first token, median seconds from first token to
        the last, and the mean rows sampled in the steps while they ran."""
        mine = [r for r in self.requests if r[0] in names]
        if not mine:
            return 0.0, 0.0, 0.0
        rows = [s[1] for s in self.steps for _, _, first, end in mine if first < s[0] <= end]
        return (
            statistics.median(first - sub for _, sub, first, _ in mine),
            statistics.median(end - first for _, _, first, end in mine),
            statistics.fmean(rows) if rows else 0.0,
        )

    def decode_steps(self) -> dict[int, tuple[float, float]]:
        """Decode-only steps (no prefill chunk) by rows: median wall ms and median engine-thread CPU ms."""
        by: dict[int, list[Step]] = {}
        for s in self.steps:
            if s[2] == s[1]:
                by.setdefault(s[1], []).append(s)
        return {
            n: (statistics.median(s[3] for s in v) * 1000, statistics.median(s[4] for s in v) * 1000)
            for n, v in sorted(by.items())
        }

    def prefill_steps(self) -> tuple[float, float, float]:
        """Steps with a prefill chunk (admissions, recomputes): their share of the steps, median wall and
        engine-thread CPU ms."""
        mixed = [s for s in self.steps if s[2] > s[1]]
        if not mixed:
            return 0.0, 0.0, 0.0
        wall, cpu = statistics.median(s[3] for s in mixed), statistics.median(s[4] for s in mixed)
        return len(mixed) / len(self.steps), wall * 1000, cpu * 1000

    def waits_ms(self) -> tuple[float, float]:
        """Mean ms per step the engine thread waited: for a core (run queue), and blocked (GIL, locks)."""
        if not self.steps:
            return 0.0, 0.0
        runq = statistics.fmean(s[6] for s in self.steps)
        blocked = statistics.fmean(s[3] - s[4] - s[6] for s in self.steps)
        return runq * 1000, blocked * 1000


def run_queue_seconds(schedstat: str) -> float:
    """Seconds a thread has spent runnable but waiting for a core (Linux; 0 where unreadable)."""
    try:
        with open(schedstat) as f:
            return int(f.read().split()[1]) / 1e9
    except OSError:
        return 0.0


class EngineLog(StepLog):
    """A StepLog filled by hooks on one engine's `_paged_step` and `_forward_paged` (the step and its
    forward) and `_emit_row` (a request finishing). Runs on the engine thread; a list append is atomic."""

    def __init__(self, engine: Any) -> None:
        super().__init__()
        paged_step, forward, emit_row = engine._paged_step, engine._forward_paged, engine._emit_row
        current: dict[str, Any] = {}

        def on_paged_step(batch: Any) -> None:
            stat = f"/proc/self/task/{threading.get_native_id()}/schedstat"
            start, cpu, runq = time.perf_counter(), time.thread_time(), run_queue_seconds(stat)
            current.clear()
            paged_step(batch)
            if current:
                end = time.perf_counter()
                self.steps.append(
                    (
                        end,
                        current["rows"],
                        current["tokens"],
                        end - start,
                        time.thread_time() - cpu,
                        current["fwd"],
                        run_queue_seconds(stat) - runq,
                    )
                )

        def on_forward(batch: Any, schedule: Any) -> Any:
            start = time.perf_counter()
            rows, logits = forward(batch, schedule)
            if schedule.chunks:
                current.update(rows=len(rows), tokens=schedule.tokens, fwd=time.perf_counter() - start)
            return rows, logits

        def on_emit_row(row: Any, pick: Any, now: float) -> None:
            emit_row(row, pick, now)
            if row.finish_reason is not None:
                handle = row.handle
                self.requests.append((row.tenant, handle.submitted_at, handle.first_token_at, now))

        engine._paged_step = on_paged_step
        engine._forward_paged = on_forward
        engine._emit_row = on_emit_row
