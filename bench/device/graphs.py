"""Section `graphs`: the decode step (llama.py's model, 32 rank-16 adapters) replayed in a CUDA graph against
eager, at batch sizes 1-256.

The graphed step comes from `graphed_step` below, the one place to wire the engine's graph runner: it uses
`adapters_core.paged.graphs` when that module exists (its `DecodeGraphRunner(model)`, whose
`step(plan) -> logits` replays a captured step for the plan's batch-size bucket), and otherwise tries to
capture the eager `paged_step` itself with `torch.cuda.CUDAGraph` (a step that builds its index tensors from
Python lists on the host cannot be captured: the section then says "not available" and why). Every graphed
step's logits are checked against the eager step's before it is timed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from bench.device.common import Section, device, section_args, skip_unless_importable

Step = Callable[[], Any]


def graphed_step(bench: Any, plan: Any, use_graphs: bool = True) -> tuple[Step | None, str]:
    """A callable that runs `plan`'s decode step from a CUDA graph, and how it was made; (None, why) when
    there is none."""
    import torch

    try:
        from adapters_core.paged import graphs  # type: ignore[attr-defined]
    except ImportError:
        graphs = None
    runner_cls = getattr(graphs, "DecodeGraphRunner", None)
    if runner_cls is not None:
        # One bucket exactly the plan's size: rows, and blocks of its longest row.
        rows, blocks = len(plan.chunks), max(len(c.block_table) for c in plan.chunks)
        runner = runner_cls(bench.model, max_batch=rows, max_blocks=blocks, use_graphs=use_graphs)
        why = runner.why_not(plan)
        if why is not None:
            return None, f"DecodeGraphRunner refuses this plan: {why}"
        runner.capture([rows])
        how = (
            "DecodeGraphRunner"
            if use_graphs
            else "DecodeGraphRunner's static step, eager (no CUDA: smoke run)"
        )
        return (lambda: runner.step(plan)), how
    # No runner in this checkout: capture the eager step as it is.
    dev = bench.device
    try:
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(2):
                bench.step(plan)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = bench.step(plan)
    except Exception as err:  # what stops a capture is the finding
        torch.cuda.synchronize(dev)
        return (
            None,
            f"not available: capturing the eager paged_step failed ({type(err).__name__}: {str(err)[:200]})",
        )

    def replay() -> Any:
        graph.replay()
        return out

    return replay, "torch.cuda.CUDAGraph over the eager paged_step (no graph runner in this checkout)"


def wall_ms(fn: Step, bench: Any, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        bench.sync()
        start = time.perf_counter()
        fn()
        bench.sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> None:
    args = section_args(__doc__, argv)
    section = Section("graphs", "Decode step: CUDA graph against eager")
    if skip_unless_importable(section, args.out, "transformers", "safetensors"):
        return
    import torch

    from bench.device.llama import LLAMA3_8B_2_LAYERS, SMOKE, DecodeBench

    smoke = args.smoke_cpu
    dev = device(smoke)
    geometry, batches, adapters = (SMOKE, (1, 4), 2) if smoke else (LLAMA3_8B_2_LAYERS, (1, 8, 64, 256), 32)
    bench = DecodeBench(geometry, dev, adapters=adapters, rank=16, max_rows=max(batches), seed=1)
    section.add(
        f"{'smoke model' if smoke else 'Llama-3-8B geometry, 2 layers, bf16'}, context {geometry.context}, rows over "
        f"{adapters} rank-16 adapters; wall ms per step (median), the device synchronised.",
        "",
        "| rows | eager ms | graph ms | eager / graph | max abs logit diff | graph from |",
        "|---|---|---|---|---|---|",
    )
    refused = ""  # a failed capture is not retried: it can leave the CUDA context unusable for another try
    for rows in batches:
        plan = bench.plan(rows, bench.names_for(rows, adapters))
        eager = wall_ms(partial(bench.step, plan), bench, 2 if smoke else 10)
        if dev.type != "cuda":  # the smoke run checks the runner's static step against the eager one
            static, how = graphed_step(bench, plan, use_graphs=False)
            if static is None:
                raise RuntimeError(how)
            diff = (static().float() - bench.step(plan).float()).abs().max().item()
            if diff > 1e-3:
                raise RuntimeError(f"the static decode step differs from paged_step by {diff:.3g}")
            ms = wall_ms(static, bench, 2)
            section.add(f"| {rows} | {eager:.2f} | {ms:.2f} | {eager / ms:.2f}x | {diff:.3g} | {how} |")
            continue
        graphed, how = graphed_step(bench, plan) if not refused else (None, refused)
        if graphed is None:
            refused = how
            section.add(f"| {rows} | {eager:.2f} | n/a | n/a | n/a | {how} |")
            continue
        expected = bench.step(plan).float()
        diff = (graphed().float() - expected).abs().max().item()
        ms = wall_ms(graphed, bench, 10)
        section.add(f"| {rows} | {eager:.2f} | {ms:.2f} | {eager / ms:.2f}x | {diff:.3g} | {how} |")
        del graphed
        torch.cuda.empty_cache()
    section.save(args.out)


if __name__ == "__main__":
    main()
