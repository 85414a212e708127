"""One `swapyard bench` run: files, servers, calibration, the settings (systems interleaved), results.

    1. fixtures: the base, `max(N)` adapters and the merged checkpoint under the work directory;
    2. servers, started together and measured one at a time: Swapyard over the adapters (it serves both
       "swapyard" and "base-only": the same process, requests with and without an adapter), Swapyard over
       the merged checkpoint ("merged"), and the PEFT baseline with `peft_adapters` adapters;
    3. calibration: base-only in a closed loop gives its capacity (requests/s); arrival rates are multiples
       of it, and unless given, the SLO bounds are 2x its TTFT p50 and 1.5x its TPOT p50 at that load;
    4. per setting, one trace (same seed: the N sweep shares arrivals and lengths), sent to each system in
       turn, the order rotated per setting; /metrics and the server's peak RSS are read around each run;
    5. results.json (every request's token times), results.md (table and goals), PNG plots.

A time budget for the measurements (calibration and settings; writing the files and starting the servers
come on top) skips the settings that would not fit: recorded as skipped, never silently.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from . import fixtures as fx
from .client import RequestResult, run_closed_loop, run_open_loop
from .plots import write_plots
from .presets import Preset, Setting
from .report import Goal, Slo, evaluate_goals, markdown_goals, markdown_table, summarize
from .servers import (
    MemoryWatch,
    ServerProcess,
    counter_delta,
    gpu_memory_bytes,
    peft_command,
    scrape_store,
    swapyard_command,
)
from .workload import TraceRequest, WorkloadSpec, make_trace

SERVED_BY = {"swapyard": "swapyard", "base-only": "swapyard", "merged": "merged", "peft-baseline": "peft"}


@dataclass(frozen=True)
class Options:
    out_dir: Path
    workdir: Path | None = None
    keep_workdir: bool = False
    seed: int = 0
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    prompts_file: str | None = None
    progress: bool = True
    command: str = ""


def goals_of(preset: Preset) -> list[Goal]:
    """Issue 19's goals, at the preset's headline setting and its largest number of adapters; and, where the
    preset has a closed-loop setting with both, Swapyard's capacity against the PEFT baseline's (at a fixed
    arrival rate a system that keeps up shows the rate, not its capacity)."""
    head = Setting(preset.headline_adapters, preset.headline_factor, ()).label
    most = Setting(preset.max_adapters, preset.headline_factor, ()).label
    n, m = preset.headline_adapters, preset.max_adapters
    goals = [
        Goal(f"{n} adapters: throughput vs base-only", head, "swapyard", "base-only", "throughput_rps", 0.9),
        Goal(
            f"{n} adapters: throughput vs PEFT baseline",
            head,
            "swapyard",
            "peft-baseline",
            "throughput_rps",
            5.0,
        ),
        Goal(f"{m} adapters: throughput vs base-only", most, "swapyard", "base-only", "throughput_rps", 0.8),
        Goal(
            f"{m} adapters: TTFT p99 vs base-only",
            most,
            "swapyard",
            "base-only",
            "ttft_s.p99",
            2.0,
            at_most=True,
        ),
    ]
    for s in preset.settings:
        if s.mode == "closed" and {"swapyard", "peft-baseline"} <= set(s.systems):
            text = f"{s.n_adapters} adapters, closed loop (capacity): throughput vs PEFT baseline"
            goals.append(Goal(text, s.label, "swapyard", "peft-baseline", "throughput_rps", 5.0))
    return goals


def adapter_names(system: str, trace: list[TraceRequest]) -> list[str | None]:
    """What each request asks for on `system`: its adapter, or none (base-only, merged)."""
    if system in ("base-only", "merged"):
        return [None] * len(trace)
    return [None if r.adapter is None else fx.adapter_name(r.adapter) for r in trace]


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


class Runner:
    def __init__(self, preset: Preset, options: Options) -> None:
        self.preset = preset
        self.options = options
        self.started = time.monotonic()
        self.servers: dict[str, ServerProcess] = {}
        self.cells: list[dict[str, Any]] = []
        self.words = fx.words(preset.base.vocab_size)
        self.bar: Any = None
        self.measuring_since = time.monotonic()

    # -- stages --------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        opts, preset = self.options, self.preset
        opts.out_dir.mkdir(parents=True, exist_ok=True)
        workdir = opts.workdir or Path(tempfile.mkdtemp(prefix=f"swapyard-bench-{preset.name}-"))
        result: dict[str, Any] = {
            "preset": preset.name,
            "command": opts.command,
            "started_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "seed": opts.seed,
        }
        try:
            files = self._fixtures(workdir)
            self._start_servers(files, workdir)
            result["setup_s"] = time.monotonic() - self.started
            self.measuring_since = time.monotonic()
            capacity, slo, calibration = self._calibrate()
            result.update(calibration=calibration, slo=asdict(slo), capacity_rps=capacity)
            self._settings(capacity, slo)
        finally:
            for server in self.servers.values():
                server.stop()
            if self.bar is not None:
                self.bar.close()
            if opts.workdir is None and not opts.keep_workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        result["cells"] = self.cells
        result["goals"] = evaluate_goals(goals_of(preset), self.cells)
        result["plots"] = [
            str(p)
            for p in write_plots(self.cells, opts.out_dir, preset.headline_adapters, preset.headline_factor)
        ]
        result["elapsed_s"] = time.monotonic() - self.started
        result["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        (opts.out_dir / "results.json").write_text(json.dumps(result, indent=1))
        (opts.out_dir / "results.md").write_text(render_markdown(result))
        return result

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(text)
        elif self.options.progress:
            tqdm.write(f"swapyard bench: {text}")

    def _fixtures(self, workdir: Path) -> fx.Fixtures:
        preset = self.preset
        spec = preset.adapter_spec()
        bar = tqdm(
            total=spec.n_adapters, desc="writing adapters", unit="adapter", disable=not self.options.progress
        )
        try:
            return fx.prepare(
                workdir, preset.base, spec, device=preset.device, dtype=preset.dtype, progress=bar.update
            )
        finally:
            bar.close()

    def _start_servers(self, files: fx.Fixtures, workdir: Path) -> None:
        preset = self.preset
        systems = {s for setting in preset.settings for s in setting.systems} | {"base-only"}
        logs = workdir / "logs"
        common = {"max_batch_size": preset.max_batch_size}
        flags = [*preset.swapyard_flags]
        if preset.device != "cpu":
            flags += ["--device", preset.device]
        if systems & {"swapyard", "base-only"}:
            self.servers["swapyard"] = ServerProcess(
                "swapyard",
                swapyard_command(files.base_dir, adapter_dir=files.adapters_dir, extra=flags, **common),
                logs / "swapyard.log",
                preset.server_threads,
            )
        if "merged" in systems:
            self.servers["merged"] = ServerProcess(
                "merged",
                swapyard_command(files.merged_dir, adapter_dir=None, extra=flags, **common),
                logs / "merged.log",
                preset.server_threads,
            )
        if "peft-baseline" in systems:
            self.servers["peft"] = ServerProcess(
                "peft-baseline",
                peft_command(
                    files.base_dir,
                    files.adapters_dir,
                    preset.peft_adapters,
                    device=preset.device,
                    dtype=preset.dtype,
                    **common,
                ),
                logs / "peft.log",
                preset.server_threads,
            )
        for server in self.servers.values():
            server.start()
        self._say(f"starting {', '.join(self.servers)} (logs in {logs})")
        for server in self.servers.values():
            server.wait_ready(preset.startup_timeout_s)

    def _calibrate(self) -> tuple[float, Slo, dict[str, Any]]:
        """Base-only in a closed loop: its capacity, and the SLO bounds unless given."""
        preset, opts = self.preset, self.options
        spec = self._spec(0, rate=1.0, n_requests=preset.calibration_requests)
        trace = make_trace(spec, opts.seed + 1, self.words)
        self.bar = tqdm(total=len(trace), desc="calibrating base-only", unit="req", disable=not opts.progress)
        results, wall = asyncio.run(
            run_closed_loop(
                self.servers["swapyard"].url,
                trace,
                [None] * len(trace),
                concurrency=preset.concurrency,
                deadline_s=preset.time_budget_s,
                on_done=self._tick,
            )
        )
        provisional = Slo(float("inf"), float("inf"))
        summary = summarize(results, wall, provisional)
        if summary["completed"] == 0:
            errors = sorted({r.error or "" for r in results})[:3]
            raise RuntimeError(f"calibration: base-only completed no request ({errors})")
        ttft50, tpot50 = summary["ttft_s"]["p50"], summary["tpot_s"]["p50"] or summary["itl_s"]["p50"]
        slo = Slo(
            opts.slo_ttft_s if opts.slo_ttft_s is not None else 2.0 * ttft50,
            opts.slo_tpot_s if opts.slo_tpot_s is not None else 1.5 * tpot50,
        )
        return summary["throughput_rps"], slo, {"concurrency": preset.concurrency, "summary": summary}

    def _spec(self, n_adapters: int, *, rate: float, n_requests: int) -> WorkloadSpec:
        p = self.preset
        return WorkloadSpec(
            n_adapters=n_adapters,
            n_requests=n_requests,
            rate=rate,
            cv=p.cv,
            alpha=p.alpha,
            input_len=p.input_len,
            output_len=p.output_len,
            prompts_file=self.options.prompts_file,
        )

    def _plan(self, capacity: float) -> list[tuple[Setting, WorkloadSpec]]:
        p = self.preset
        plan = []
        for setting in p.settings:
            rate = setting.rate_factor * capacity
            n = p.calibration_requests if setting.mode == "closed" else round(rate * p.window_s)
            n = min(max(n, p.min_requests), p.max_requests)
            plan.append((setting, self._spec(setting.n_adapters, rate=rate, n_requests=n)))
        return plan

    def _settings(self, capacity: float, slo: Slo) -> None:
        plan = self._plan(capacity)
        self.bar.reset(total=sum(spec.n_requests * len(s.systems) for s, spec in plan))
        for turn, (setting, spec) in enumerate(plan):
            trace = make_trace(spec, self.options.seed, self.words)
            systems = list(setting.systems)
            k = turn % len(systems)
            for system in systems[k:] + systems[:k]:
                self._cell(setting, spec, trace, system, capacity, slo)

    def _cell(
        self,
        setting: Setting,
        spec: WorkloadSpec,
        trace: list[TraceRequest],
        system: str,
        capacity: float,
        slo: Slo,
    ) -> None:
        preset = self.preset
        cell: dict[str, Any] = {
            "setting": setting.label,
            "system": system,
            "mode": setting.mode,
            "n_adapters": setting.n_adapters,
            "rate_factor": setting.rate_factor,
            "rate": spec.rate,
            "requests_planned": spec.n_requests,
            # the rate this trace actually offers (a short Gamma trace strays from `rate`)
            "offered_rps": (len(trace) - 1) / trace[-1].arrival_s if trace[-1].arrival_s > 0 else None,
        }
        self.cells.append(cell)
        # open loop: the arrivals, then time to drain; closed loop: the requests at capacity, twice over
        expected = trace[-1].arrival_s if setting.mode == "open" else spec.n_requests / capacity
        deadline = expected + max(2 * preset.window_s, 15.0)
        if time.monotonic() - self.measuring_since + expected + 5 > preset.time_budget_s:
            cell["skipped"] = f"time budget ({preset.time_budget_s:.0f} s) spent"
            self.bar.update(spec.n_requests)
            return
        server = self.servers[SERVED_BY[system]]
        self._say(f"{setting.label}: {system}")
        names = adapter_names(system, trace)
        memory = MemoryWatch(server.pid)
        memory.reset_peak()
        before = scrape_store(server.url) if SERVED_BY[system] != "peft" else {}
        results, wall = asyncio.run(self._load(server.url, setting, trace, names, deadline))
        if before:
            cell["store"] = counter_delta(before, scrape_store(server.url))
        cell["memory"] = {"peak_rss_bytes": memory.peak(), "rss_bytes": memory.rss()}
        if preset.device.startswith("cuda"):
            cell["memory"]["gpu_bytes"] = gpu_memory_bytes(server.pid)
        cell["summary"] = summarize(results, wall, slo)
        cell["requests"] = [r.to_json() for r in results]

    async def _load(
        self, url: str, setting: Setting, trace: list[TraceRequest], names: list[str | None], deadline: float
    ) -> tuple[list[RequestResult], float]:
        if setting.mode == "closed":
            return await run_closed_loop(
                url,
                trace,
                names,
                concurrency=self.preset.concurrency,
                deadline_s=deadline,
                on_done=self._tick,
            )
        return await run_open_loop(url, trace, names, deadline_s=deadline, on_done=self._tick)

    def _tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)


def render_markdown(result: dict[str, Any]) -> str:
    """results.md: what ran, where, the table, the goals."""
    slo = result.get("slo") or {}
    lines = [
        f"# swapyard bench --preset {result['preset']}",
        "",
        f"- command: `{result['command']}`",
        f"- started {result['started_utc']}, {result.get('elapsed_s', 0):.0f} s in all "
        f"({result.get('setup_s', 0):.0f} s writing files and starting servers); machine: "
        f"{result['machine']['platform']}, {result['machine']['cpus']} CPUs, torch {result['machine']['torch']}"
        + (f", {result['machine']['gpu']}" if result["machine"].get("gpu") else ""),
        f"- load average at start {result['machine'].get('load_average_at_start')}, at end "
        f"{result.get('load_average_at_end')}",
        f"- base-only capacity (closed loop): {result.get('capacity_rps', 0):.2f} requests/s; "
        f"SLO: TTFT <= {slo.get('ttft_s', 0) * 1e3:.0f} ms and per token <= {slo.get('tpot_s', 0) * 1e3:.0f} ms",
        "",
        markdown_table(result.get("cells", [])),
        markdown_goals(result.get("goals", [])),
        "plots: " + ", ".join(f"`{p}`" for p in result.get("plots", [])),
        "",
    ]
    return "\n".join(lines)


def run(preset: Preset, options: Options) -> dict[str, Any]:
    """Run `preset`; returns the result (also written to options.out_dir)."""
    return Runner(preset, options).run()
