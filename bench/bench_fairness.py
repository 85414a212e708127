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
    """What the engine did, from its emit stage: each step's (time, running rows), and each finished
    request's (adapter, submitted, first token, finished) times."""

    def __init__(self, engine: Engine) -> None:
        self.steps: list[tuple[float, int]] = []
        self.requests: list[tuple[str | None, float, float, float]] = []
        emit, emit_row = engine._emit, engine._emit_row

        def on_emit(rows: list[Any], picks: list[Any]) -> None:
            self.steps.append((time.perf_counter(), len(engine._batch.rows)))
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
        the last, and the mean running rows of the steps while they ran."""
        mine = [r for r in self.requests if r[0] in names]
        rows = [n for t, n in self.steps for _, _, first, end in mine if first < t <= end]
        return (
            statistics.median(first - sub for _, sub, first, _ in mine),
            statistics.median(end - first for _, _, first, end in mine),
            statistics.fmean(rows) if rows else 0.0,
        )

    def step_ms(self) -> dict[int, float]:
        """Median step time (between consecutive emits) by the running rows of the later step."""
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
    rows = []
    with TestClient(create_app(config, engine=engine)) as client:
        for name in names:  # warm up every adapter
            post(client, name, text, args.new)
        log.clear()
        unloaded = statistics.median(post(client, n, text, args.new) for n in others for _ in range(5))
        alone = (*log.breakdown(others), log.step_ms())
        # capacity: `rows` requests at once, back to back
        burst = [(0.0, names[i % 4]) for i in range(4 * args.rows)]
        t0 = time.perf_counter()
        run_trace(client, burst, text, args.new)
        capacity = len(burst) / (time.perf_counter() - t0)  # requests per second
        offered = args.overload * capacity  # = (len(others) + FLOOD) / gap
        gap = (len(others) + FLOOD) / offered
        arrivals = trace(others, flooder, gap, args.duration)
        for policy in args.policies:
            engine.fairness.fifo = policy == "fifo"
            engine.fairness.counters.clear()  # each policy starts from nobody served
            log.clear()
            got = run_trace(client, arrivals, text, args.new)
            mine = [s for n in others for s in got.get(n, [])]
            median = statistics.median(mine)
            rows.append(
                (
                    policy,
                    len(mine),
                    median,
                    statistics.median(got[flooder]),
                    *log.breakdown(others),
                    log.step_ms(),
                )
            )
    print(
        f"unloaded median latency U = {unloaded * 1000:.0f} ms; capacity {capacity:.2f} req/s; offered "
        f"{offered:.2f} req/s ({args.overload}x); each other adapter every {gap:.2f} s, {flooder} 10x as often"
    )
    print(
        "| policy | others' requests | others' median | others' median / U (goal <= 1.5) | flooder's median / U |"
    )
    print("|---|---|---|---|---|")
    for policy, count, median, flood, *_ in rows:
        print(
            f"| {policy} | {count} | {median * 1000:.0f} ms | {median / unloaded:.2f} | {flood / unloaded:.2f} |"
        )
    print("\nThe others' requests (engine side): where the time goes")
    print(
        "| run | submit -> first token ms | first -> last token ms | mean running rows | step ms by running rows |"
    )
    print("|---|---|---|---|---|")
    for label, (wait, run, mean_rows, steps) in [
        ("unloaded", alone),
        *((row[0], row[4:]) for row in rows),
    ]:
        per = ", ".join(f"{n}: {ms:.1f}" for n, ms in steps.items())
        print(f"| {label} | {wait * 1000:.0f} | {run * 1000:.0f} | {mean_rows:.2f} | {per} |")


if __name__ == "__main__":
    main()
