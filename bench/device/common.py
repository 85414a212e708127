"""What every device-check section shares: its result file, the device, timers and per-kernel times.

A section is `python -m bench.device.<name> --out RESULTS_DIR [--smoke-cpu]`; it writes
`RESULTS_DIR/<name>.json` (`Section.save`): a title, a status, markdown lines, and the goals it measured.
The driver (`__main__.py`) runs each one in its own process with a time limit; `report.py` assembles them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

Fn = Callable[[], object]


@dataclass
class Goal:
    """One of the issue's goals as measured: `met` None when it could not be measured."""

    goal: str
    measured: str
    target: str
    met: bool | None


@dataclass
class Section:
    """One section's result: `status` is ok | skipped | failed | timed out."""

    name: str
    title: str
    status: str = "ok"
    lines: list[str] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
            self.lines.append(line)

    def save(self, out: Path) -> None:
        (out / f"{self.name}.json").write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Section:
        data = json.loads(path.read_text())
        goals = [Goal(**g) for g in data.pop("goals", [])]
        return cls(**data, goals=goals)


def section_args(doc: str | None, argv: list[str] | None = None) -> argparse.Namespace:
    """`--out DIR [--smoke-cpu]`: what the driver passes every section (`argv` None: sys.argv)."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--out", type=Path, required=True, help="the results folder")
    parser.add_argument("--smoke-cpu", action="store_true", help="tiny shapes on the CPU (checks the script)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def skip_unless_importable(section: Section, out: Path, *modules: str) -> bool:
    """True (and the section saved as skipped, naming what is missing) when a module cannot be imported."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        section.status = "skipped"
        section.add(f"skipped: this machine lacks {', '.join(missing)} (no network to install it)")
        section.save(out)
    return bool(missing)


def device(smoke: bool) -> Any:
    import torch

    if smoke:  # tiny shapes: more threads only spin against each other (and the other jobs of a shared CPU)
        torch.set_num_threads(1)
    return torch.device("cpu" if smoke else "cuda")


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


# -- timers ------------------------------------------------------------------------------------------------


def _sync(dev: Any) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def host_us(fn: Fn, dev: Any, calls: int = 50) -> float:
    """CPU microseconds per call of `fn` (Python, argument checks, launches), the device not waited for: the
    host cost a step pays per op however fast the kernels are. Median of 5 runs of `calls` calls (on the
    CPU, where this is only the smoke run, one call)."""
    if dev.type != "cuda":
        return _once_us(fn)
    fn()
    _sync(dev)
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls)
        _sync(dev)
    return statistics.median(runs) * 1e6


def _once_us(fn: Fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e6


def eager_us(fn: Fn, dev: Any) -> float:
    """Microseconds per call as an eager caller sees them: CUDA events around each call, the L2 flushed
    between calls (triton's do_bench), host launch overhead included; on the CPU (smoke) one timed call."""
    if dev.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")) * 1e3
    return _once_us(fn)


def flush_buffer(dev: Any) -> Any:
    """A buffer twice the L2 cache (at least 64 MiB): zeroing it evicts whatever the last kernel left there."""
    import torch

    l2 = int(getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 0) or (50 << 20))
    return torch.empty(max(2 * l2, 64 << 20) // 4, dtype=torch.int32, device=dev)


def graph_cold_us(fn: Fn, dev: Any, reps: int = 20) -> tuple[float, str]:
    """Device microseconds per call of `fn` replayed in a CUDA graph with a cold L2: one graph of `reps`
    (flush, fn) pairs and one of `reps` flushes alone, each replayed 10 times; the difference of the medians
    over `reps`. No host cost at all. Returns (nan, why) when `fn` cannot be captured."""
    import torch

    if dev.type != "cuda":
        return float("nan"), "no CUDA graphs on the CPU"
    flush = flush_buffer(dev)
    try:
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm-up (and Triton compiles) outside the capture
            for _ in range(3):
                fn()
        torch.cuda.current_stream(dev).wait_stream(side)
        both, flush_only = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(both):
            for _ in range(reps):
                flush.zero_()
                fn()
        with torch.cuda.graph(flush_only):
            for _ in range(reps):
                flush.zero_()
    except Exception as err:  # capture errors differ across torch/CUDA versions: report them, never hide
        torch.cuda.synchronize(dev)
        return float("nan"), f"capture failed: {type(err).__name__}: {str(err)[:160]}"

    def replay_ms(graph: Any) -> float:
        graph.replay()
        times = []
        for _ in range(10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    us = (replay_ms(both) - replay_ms(flush_only)) * 1e3 / reps
    del both, flush_only, flush
    return max(us, 0.0), ""


def kernel_times(fn: Fn, dev: Any, calls: int = 5) -> list[tuple[str, float]]:
    """(kernel name, device µs per call) of what `fn` runs, largest first, from torch.profiler (the L2
    flushed before each call on CUDA). On the CPU: the aten ops' self CPU time instead."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    flush = flush_buffer(dev) if dev.type == "cuda" else None
    fn()
    _sync(dev)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            if flush is not None:
                flush.zero_()
            fn()
        _sync(dev)
    rows = []
    for event in prof.key_averages():
        if dev.type == "cuda":
            us = float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))
            on_device = getattr(event, "device_type", None) == torch.autograd.DeviceType.CUDA
            # the flush is an int32 fill; the op's own memsets fill float buffers
            if not on_device or "FillFunctor<int>" in event.key or us <= 0:
                continue
        else:
            us = float(event.self_cpu_time_total)
            if not event.key.startswith("aten::") or us <= 0:
                continue
        rows.append((event.key, us / calls))
    return sorted(rows, key=lambda r: -r[1])


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")
