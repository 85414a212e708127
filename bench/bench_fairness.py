"""Fairness under overload (issue 17.8's measure): one adapter sends 10x the load of each other adapter, the
total over the engine's capacity; do the others keep their unloaded latency? VTC (engine/fairness.py, the
engine's policy) against FIFO admission (`VirtualTokenCounter.fifo`, a hook for this benchmark only).

The server is a tiny word-level Llama without EOS (every request generates exactly `--new` tokens) with 4 LoRA
adapters (bench/serving/fixtures.py), served as production serves it: `swapyard serve` in its own process
(bench/fairness_server.py: the same settings, app and uvicorn server, plus a route that reads the engine's step
log), driven from this process by an asyncio open-loop client (httpx.AsyncClient, one connection per request
in flight). `--in-process` runs the app inside this process instead (TestClient, one thread per request: the
client threads then share the GIL with the engine thread), as the first runs did.

First each other adapter's requests run alone, one at a time: the unloaded latency U (median). Then, per
policy, an open-loop trace for `--duration` seconds: each other adapter sends a request every `--gap` x U
seconds, the flooder (a0000) 10 times as often, so the offered load is `--overload` x the engine's measured
capacity. Latency = submit to response, client side. Reported: the others' median latency over U (goal
<= 1.5), the flooder's, and from the engine's step log (steplog.py) where the others' time went.

    .venv/bin/python bench/bench_fairness.py --reps 3 --policies vtc      # about two minutes a rep on 2 cores
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.fairness_targets import POLICIES, InProcess, ServerTarget, Target
from bench.serving.fixtures import AdapterSpec, BaseSpec, adapter_name, prepare, words
from bench.steplog import StepLog

FLOOD = 10  # the flooder's load over each other adapter's


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


@dataclass
class Result:
    """One policy's trace: U (the others' median alone, just before), the others' and the flooder's medians,
    the engine's log alone and under the trace, served requests per second (the trace's arrivals over its
    first arrival to its last response), the load average, and the CPU seconds per trace second of the
    server process and of the client (None in process)."""

    rep: int
    policy: str
    unloaded: float
    count: int
    median: float
    flood: float
    alone: StepLog
    loaded: StepLog
    others: list[str]
    served: float
    load: float
    cpu: tuple[float, float] | None
    quiet: float | None = None  # the others' median under their part of the trace alone (`--without-flood`)

    HEADER = (
        "| run | policy | load avg | U ms | others' median ms | **others' median / U** | flooder's median / U | "
        "others' wait, run ms: alone → under the trace | rows per step | served req/s | "
        "decode step ms wall (engine-thread CPU) by rows: alone → under the trace | steps with a prefill: share, ms wall (CPU) | engine thread's wait ms per step: core, blocked | "
        "CPU s/s server, client | others' median without the flood ms (**others' median / it**) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )

    def row(self) -> str:
        (wait0, run0, _), (wait, run, rows) = (
            self.alone.breakdown(self.others),
            self.loaded.breakdown(self.others),
        )
        alone = self.alone.decode_steps().get(1)
        steps = ", ".join(f"{n}: {w:.1f} ({c:.1f})" for n, (w, c) in self.loaded.decode_steps().items())
        share, pwall, pcpu = self.loaded.prefill_steps()
        runq, blocked = self.loaded.waits_ms()
        cpu = f"{self.cpu[0]:.2f}, {self.cpu[1]:.2f}" if self.cpu else "in process"
        quiet = f"{self.quiet * 1000:.0f} (**{self.median / self.quiet:.2f}**)" if self.quiet else ""
        return (
            f"| {self.rep} | {self.policy} | {self.load:.1f} | {self.unloaded * 1000:.0f} | {self.median * 1000:.0f} | "
            f"**{self.median / self.unloaded:.2f}** | {self.flood / self.unloaded:.1f} | {wait0 * 1000:.0f}, "
            f"{run0 * 1000:.0f} → {wait * 1000:.0f}, {run * 1000:.0f} | {rows:.2f} | {self.served:.1f} | "
            f"1: {alone[0]:.1f} ({alone[1]:.1f}) → {steps} | {share:.0%}, {pwall:.1f} ({pcpu:.1f}) | {runq:.1f}, {blocked:.1f} | {cpu} | {quiet} |"
            if alone
            else f"| {self.rep} | {self.policy} | (no 1-row steps alone) |"
        )


def measure(target: Target, args: argparse.Namespace, names: list[str], text: str) -> list[Result]:
    flooder, others = names[0], names[1:]
    for name in names:  # warm up every adapter
        target.post(name, text, args.new)
    # capacity: `rows` requests at once per round, back to back
    burst = [(0.0, names[i % 4]) for i in range(4 * args.rows)]
    t0 = time.perf_counter()
    target.run(burst, text, args.new)
    capacity = len(burst) / (time.perf_counter() - t0)  # requests per second
    offered = args.overload * capacity  # = (len(others) + FLOOD) / gap
    gap = (len(others) + FLOOD) / offered
    arrivals = trace(others, flooder, gap, args.duration)
    print(
        f"capacity {capacity:.2f} req/s; offered {offered:.2f} req/s ({args.overload}x); each other adapter "
        f"every {gap:.2f} s, {flooder} {FLOOD}x as often; load average {os.getloadavg()}",
        flush=True,
    )
    results = []
    for rep in range(args.reps):
        for policy in args.policies:
            # U just before the trace: the shared machine's load drifts, the ratio is within one run
            target.reset("vtc")
            unloaded = statistics.median(target.post(n, text, args.new) for n in others for _ in range(5))
            alone = target.log()
            quiet = None
            if args.without_flood:  # the others' own load, no flood: their latency batched with each other
                target.reset(policy)
                got = target.run([a for a in arrivals if a[1] != flooder], text, args.new)
                quiet = statistics.median(s for n in others for s in got.get(n, []))
            target.reset(policy)
            load = os.getloadavg()[0]
            cpu0 = target.cpu_seconds()
            t0 = time.perf_counter()
            got = target.run(arrivals, text, args.new)
            makespan = time.perf_counter() - t0
            cpu1 = target.cpu_seconds()
            mine = [s for n in others for s in got.get(n, [])]
            result = Result(
                rep,
                policy,
                unloaded,
                len(mine),
                statistics.median(mine),
                statistics.median(got[flooder]),
                alone,
                target.log(),
                others,
                len(arrivals) / makespan,
                max(load, os.getloadavg()[0]),
                None
                if cpu0 is None or cpu1 is None
                else ((cpu1[0] - cpu0[0]) / makespan, (cpu1[1] - cpu0[1]) / makespan),
                quiet,
            )
            results.append(result)
            print(f"{time.strftime('%H:%M:%S', time.gmtime())} UTC {result.row()}", flush=True)
    return results


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
    parser.add_argument("--policies", nargs="+", default=["vtc", "fifo"], choices=POLICIES)
    parser.add_argument(
        "--without-flood",
        action="store_true",
        help="also run the others' part of each trace alone first (no flood): their median batched only with "
        "each other, a second baseline beside U (each request alone)",
    )
    parser.add_argument(
        "--in-process", action="store_true", help="the app in this process (TestClient), not a server process"
    )
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
    vocab = words(spec.vocab_size)
    text = " ".join(vocab[2 + i % 100] for i in range(args.prompt))
    flags = [
        *("--base-model", str(fixtures.base_dir)),
        *(a for n in names for a in ("--adapter", f"{n}={fixtures.adapters_dir / n}")),
        *("--max-batch-size", str(args.rows), "--max-queued-requests", "10000"),
    ]
    print(f"{' '.join(sys.argv)}: {'in process' if args.in_process else 'server process'}", flush=True)
    target: Target = (
        InProcess(flags) if args.in_process else ServerTarget(flags, root / "server.log", args.threads)
    )
    with target:
        results = measure(target, args, names, text)
    print(f"\n{Result.HEADER}")
    for result in results:
        print(result.row())
    for policy in args.policies:
        ratios = [r.median / r.unloaded for r in results if r.policy == policy]
        print(
            f"{policy}: others' median / U over {len(ratios)} run(s): median {statistics.median(ratios):.2f}"
        )
        quiet = [r.median / r.quiet for r in results if r.policy == policy and r.quiet]
        if quiet:
            print(
                f"{policy}: others' median / theirs without the flood: median {statistics.median(quiet):.2f}"
            )


if __name__ == "__main__":
    main()
