"""Fairness under overload (issue 17.8's measure): one adapter sends 10x the load of each other adapter, the
total over the engine's capacity; do the others keep their unloaded latency? VTC (engine/fairness.py, the
engine's policy) against FIFO admission (`VirtualTokenCounter.fifo`, a hook for this benchmark only).

In process: the real app (TestClient, one thread per request) over a tiny word-level Llama without EOS (every
request generates exactly `--new` tokens) with 4 LoRA adapters (bench/serving/fixtures.py). First each other
adapter's requests run alone, one at a time: the unloaded latency U (median). Then, per policy, an open-loop
trace for `--duration` seconds: each other adapter sends a request every `--gap` x U seconds, the flooder
(a0000) 10 times as often, so the offered load is `--overload` x the engine's measured capacity when
`--gap` is left to the script. Latency = submit to response, client side. Reported: the others' median latency
over U (goal <= 1.5), and the flooder's, per policy.

    .venv/bin/python bench/bench_fairness.py            # about two minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient

from bench.serving.fixtures import AdapterSpec, BaseSpec, adapter_name, prepare, words
from server.app import create_app
from server.engine import Engine, build_engine
from server.settings import Settings

FLOOD = 10  # the flooder's load over each other adapter's


def post(client: TestClient, adapter: str, text: str, new: int) -> float:
    """Seconds from submit to the whole response."""
    start = time.perf_counter()
    body = {"inputs": text, "parameters": {"adapter_id": adapter, "max_new_tokens": new}}
    response = client.post("/generate", json=body)
    if response.status_code != 200:
        raise RuntimeError(response.text)
    return time.perf_counter() - start


def trace(others: list[str], flooder: str, gap: float, duration: float) -> list[tuple[float, str]]:
    """(arrival second, adapter), evenly spaced per adapter (phases staggered so arrivals do not coincide)."""
    out = []
    for k, name in enumerate(others):
        t = gap * k / len(others)
        while t < duration:
            out.append((t, name))
            t += gap
    t, step = 0.0, gap / FLOOD
    while t < duration:
        out.append((t + step / 2, flooder))
        t += step
    return sorted(out)


def run_trace(
    client: TestClient, arrivals: list[tuple[float, str]], text: str, new: int
) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    lock = threading.Lock()

    def one(name: str) -> None:
        seconds = post(client, name, text, new)
        with lock:
            results.setdefault(name, []).append(seconds)

    threads = []
    start = time.perf_counter()
    for at, name in arrivals:
        delay = start + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        thread = threading.Thread(target=one, args=(name,))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    return results


class Log:
    """What the engine did, from its emit stage: each step's (time, rows sampled in it: the running rows
    that ran, paused ones not counted), and each finished request's (adapter, submitted, first token, finished)
    times."""

    def __init__(self, engine: Engine) -> None:
        self.steps: list[tuple[float, int]] = []
        self.requests: list[tuple[str | None, float, float, float]] = []
        emit, emit_row = engine._emit, engine._emit_row

        def on_emit(rows: list[Any], picks: list[Any]) -> None:
            self.steps.append((time.perf_counter(), len(rows)))
            emit(rows, picks)

        def on_emit_row(row: Any, pick: Any, now: float) -> None:
            emit_row(row, pick, now)
            if row.finish_reason is not None:
                handle = row.handle
                self.requests.append((row.tenant, handle.submitted_at, handle.first_token_at, now))

        engine._emit = on_emit  # type: ignore[method-assign]
        engine._emit_row = on_emit_row  # type: ignore[method-assign]

    def clear(self) -> None:
        self.steps.clear()
        self.requests.clear()

    def breakdown(self, names: list[str]) -> tuple[float, float, float]:
        """Of `names`' requests: median seconds from submit to first token, median seconds from first token to
        the last, and the mean rows sampled in the steps while they ran."""
        mine = [r for r in self.requests if r[0] in names]
        rows = [n for t, n in self.steps for _, _, first, end in mine if first < t <= end]
        return (
            statistics.median(first - sub for _, sub, first, _ in mine),
            statistics.median(end - first for _, _, first, end in mine),
            statistics.fmean(rows) if rows else 0.0,
        )

    def step_ms(self) -> dict[int, float]:
        """Median step time (between consecutive emits) by the rows sampled in the later step."""
        by: dict[int, list[float]] = {}
        for (a, _), (b, n) in zip(self.steps, self.steps[1:]):
            by.setdefault(n, []).append(b - a)
        return {n: statistics.median(v) * 1000 for n, v in sorted(by.items())}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=4, help="--max-batch-size of the engine")
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    parser.add_argument("--new", type=int, default=16, help="generated tokens per request")
    parser.add_argument("--overload", type=float, default=1.5, help="offered load over measured capacity")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals per policy")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--reps", type=int, default=1, help="traces per policy (U measured before each)")
    parser.add_argument("--policies", nargs="+", default=["vtc", "fifo"], choices=["vtc", "fifo"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="swapyard-fairness-"))
    spec = BaseSpec(
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    fixtures = prepare(root, spec, AdapterSpec(n_adapters=4))
    names = [adapter_name(i) for i in range(4)]
    flooder, others = names[0], names[1:]
    vocab = words(spec.vocab_size)
    text = " ".join(vocab[2 + i % 100] for i in range(args.prompt))
    adapters = [f"{n}={fixtures.adapters_dir / n}" for n in names]
    config = Settings(
        base_model=str(fixtures.base_dir),
        adapters=adapters,
        max_batch_size=args.rows,
        max_queued_requests=10_000,
    )
    engine = build_engine(config)
    log = Log(engine)
    results: list[Result] = []
    with TestClient(create_app(config, engine=engine)) as client:
        for name in names:  # warm up every adapter
            post(client, name, text, args.new)
        # capacity: `rows` requests at once, back to back
        burst = [(0.0, names[i % 4]) for i in range(4 * args.rows)]
        t0 = time.perf_counter()
        run_trace(client, burst, text, args.new)
        capacity = len(burst) / (time.perf_counter() - t0)  # requests per second
        offered = args.overload * capacity  # = (len(others) + FLOOD) / gap
        gap = (len(others) + FLOOD) / offered
        arrivals = trace(others, flooder, gap, args.duration)
        print(
            f"capacity {capacity:.2f} req/s; offered {offered:.2f} req/s ({args.overload}x); each other adapter "
            f"every {gap:.2f} s, {flooder} {FLOOD}x as often",
            flush=True,
        )
        for rep in range(args.reps):
            for policy in args.policies:
                # U just before the trace: the shared machine's load drifts, the ratio is within one run
                log.clear()
                unloaded = statistics.median(
                    post(client, n, text, args.new) for n in others for _ in range(5)
                )
                alone = log.breakdown(others)
                alone_steps = log.step_ms()
                engine.fairness.fifo = policy == "fifo"
                engine.fairness.counters.clear()  # each policy starts from nobody served
                log.clear()
                t0 = time.perf_counter()
                got = run_trace(client, arrivals, text, args.new)
                makespan = time.perf_counter() - t0
                mine = [s for n in others for s in got.get(n, [])]
                result = Result(
                    rep,
                    policy,
                    unloaded,
                    len(mine),
                    statistics.median(mine),
                    statistics.median(got[flooder]),
                    alone,
                    log.breakdown(others),
                    len(arrivals) / makespan,
                )
                results.append(result)
                steps = ", ".join(f"{n}: {ms:.1f}" for n, ms in log.step_ms().items())
                print(
                    f"{result.row()}  step ms by rows sampled: alone {alone_steps.get(1, 0):.1f}; under the "
                    f"trace {steps}",
                    flush=True,
                )
    print(f"\n{Result.HEADER}")
    for result in results:
        print(result.row())
    for policy in args.policies:
        ratios = [r.median / r.unloaded for r in results if r.policy == policy]
        print(
            f"{policy}: others' median / U over {len(ratios)} run(s): median {statistics.median(ratios):.2f}"
        )


@dataclass
class Result:
    """One policy's trace: U (the others' median alone, just before), the others' and the flooder's medians,
    and the engine-side breakdown of the others' requests alone and under the trace (`Log.breakdown`)."""

    rep: int
    policy: str
    unloaded: float
    count: int
    median: float
    flood: float
    alone: tuple[float, float, float]
    loaded: tuple[float, float, float]
    served: float  # requests per second, the trace's arrivals over its first arrival to its last response

    HEADER = (
        "| run | policy | U ms | others' requests | others' median ms | others' median / U (goal <= 1.5) | "
        "flooder's median / U | others' wait, run ms: alone | under the trace | mean rows per step | served req/s |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )

    def row(self) -> str:
        (wait0, run0, _), (wait, run, rows) = self.alone, self.loaded
        return (
            f"| {self.rep} | {self.policy} | {self.unloaded * 1000:.0f} | {self.count} | {self.median * 1000:.0f} | "
            f"{self.median / self.unloaded:.2f} | {self.flood / self.unloaded:.1f} | {wait0 * 1000:.0f}, "
            f"{run0 * 1000:.0f} | {wait * 1000:.0f}, {run * 1000:.0f} | {rows:.2f} | {self.served:.2f} |"
        )


if __name__ == "__main__":
    main()
