"""Section `kernels`: the LoRA kernels against the device's measured copy bandwidth (issue 18's table).

Decode (one token per row, every row its own rank-16 adapter: each adapter's pages are read once), bf16, at
the shapes of a Llama-3-8B layer: 4096 -> 4096 (q, o), 4096 -> 1024 (GQA k/v), 4096 -> 14336 (gate/up) and
14336 -> 4096 (down), batches 1-256. Per shape and batch, for `lora_apply` on decode metadata (BGMV) and on
prefill metadata (SGMV):

- graph µs: device time per call replayed in a CUDA graph with a cold L2 (common.graph_cold_us): no host
  cost, the headline;
- eager µs: CUDA events around each call, L2 flushed (do_bench): what an eager caller waits;
- CPU µs/op: host time per call (checks, Python, launches), the device not waited for;
- kernels: each kernel's device µs per call (torch.profiler, at batches 1, 64 and 256), the memset included;
- GB/s: the bytes the op must move at least (x read, y read and written, u written and read, every distinct
  adapter's A and B once) over graph µs; % copy against a 1 GiB device-to-device copy measured in this run.

Every method's output is checked against the PyTorch reference before it is timed (a wrong one is listed
as WRONG, not timed, and fails the section). Goal: >= 70% of copy at
batch >= 64. Prefill rows (segments of 256 tokens) add the frozen layer's GEMM on the same tokens for scale.
Then the paged decode attention table (bench/device/attention.py): the Triton kernel over block tables
against gather + SDPA, 1-256 rows, 256-2,048 keys.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from bench.device.attention import attention_rows
from bench.device.common import (
    Goal,
    Section,
    device,
    eager_us,
    fmt,
    graph_cold_us,
    host_us,
    kernel_times,
    section_args,
    skip_unless_importable,
)

RANK = 16
GPU_SHAPES = [(4096, 4096), (4096, 1024), (4096, 14336), (14336, 4096)]
GPU_BATCHES = [1, 16, 64, 128, 256]
SMOKE_SHAPES = [(64, 16), (16, 64)]  # the interpreter takes ~0.3 s a call: few, small
SMOKE_BATCHES = [4]
PROFILED_BATCHES = (1, 64, 256)
GOAL_SHARE, GOAL_BATCH = 0.70, 64


@dataclass
class Case:
    """One layer's batch: a pool of `adapters` rank-16 adapters, inputs, and both metadata forms."""

    x: Any  # (T, H_in)
    y: Any  # (T, H_out)
    pool: Any
    meta_decode: Any  # BGMV when every row is one token
    meta_segments: Any  # SGMV
    min_bytes: int


def make_case(dev: Any, in_f: int, out_f: int, lengths: list[int], adapters: int, seed: int) -> Case:
    import torch

    from kernels import LoraPool, build_decode_meta, build_prefill_meta

    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    gen = torch.Generator(device=dev).manual_seed(seed)
    weights = [
        (
            (torch.randn(RANK, in_f, generator=gen, device=dev) / in_f**0.5).to(dtype),  # A (r, H_in)
            (torch.randn(out_f, RANK, generator=gen, device=dev) / RANK**0.5).to(dtype),  # B (H_out, r)
            2.0,
        )
        for _ in range(adapters)
    ]
    pool = LoraPool.from_adapters(list(weights), dtype=dtype, device=dev)
    slots = [i % adapters for i in range(len(lengths))]
    tokens = sum(lengths)
    decode = all(n == 1 for n in lengths)
    meta_decode = build_decode_meta(slots).to(dev) if decode else None
    meta_segments = build_prefill_meta(slots, lengths).to(dev)
    x = torch.randn(tokens, in_f, generator=gen, device=dev).to(dtype)
    y = torch.randn(tokens, out_f, generator=gen, device=dev).to(dtype)
    act = x.element_size()
    min_bytes = (
        tokens * (in_f + 2 * out_f) * act + adapters * RANK * (in_f + out_f) * act + 2 * tokens * RANK * 4
    )
    return Case(x, y, pool, meta_decode, meta_segments, min_bytes)


def methods(case: Case) -> dict[str, Any]:
    from kernels import lora_apply

    fns = {"sgmv": lambda: lora_apply(case.y, case.x, case.pool, case.meta_segments, backend="triton")}
    if case.meta_decode is not None:
        fns = {
            "bgmv": lambda: lora_apply(case.y, case.x, case.pool, case.meta_decode, backend="triton"),
            **fns,
        }
    return fns


def check(case: Case, fn: Any) -> str:
    """'' when `fn` on a fresh y equals the reference (bf16: a few ulps of max |y|), else what differs."""
    import torch

    from kernels import lora_apply

    y0 = case.y.clone()
    expected = lora_apply(y0.clone(), case.x, case.pool, case.meta_segments, backend="torch").float()
    case.y.copy_(y0)
    fn()
    err = (case.y.float() - expected).abs().max().item()
    case.y.copy_(y0)
    tol = 4 * 2.0**-7 if case.y.dtype == torch.bfloat16 else 1e-4
    return (
        "" if err <= tol * expected.abs().max().item() else f"WRONG: max abs err {err:.3g} vs the reference"
    )


def short(kernel: str) -> str:
    """A kernel's name without templates and arguments: `void foo<...>(...)` -> `foo`."""
    name = re.sub(r"<.*", "", re.sub(r"\(.*", "", kernel)).replace("void ", "").strip()
    return name.rsplit("::", 1)[-1][:40]


def copy_gbps(dev: Any, nbytes: int) -> float:
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch: page faults on the CPU, not bandwidth
    return 2 * nbytes / eager_us(lambda: dst.copy_(src), dev) / 1e3  # read + write


def decode_rows(section: Section, dev: Any, copy: float, smoke: bool) -> list[float]:
    """The decode table; returns % copy of the best kernel at every batch >= GOAL_BATCH."""
    import torch

    shapes, batches = (SMOKE_SHAPES, SMOKE_BATCHES) if smoke else (GPU_SHAPES, GPU_BATCHES)
    section.add(
        f"### Decode, rank {RANK}, every row a distinct adapter, {'float32 (smoke)' if smoke else 'bf16'}",
        "",
        "| in -> out | rows | kernel | graph µs (cold L2) | eager µs | CPU µs/op | min MB | GB/s (graph) | "
        "% copy | kernels (device µs per call) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    )
    goal_shares = []
    for in_f, out_f in shapes:
        for seed, rows in enumerate(batches):
            case = make_case(dev, in_f, out_f, [1] * rows, rows, seed)
            best = math.inf
            with torch.inference_mode():
                for name, fn in methods(case).items():
                    wrong = check(case, fn)
                    if wrong:  # a finding: no time for a wrong answer, and the section fails
                        section.status = "failed"
                        section.add(f"| {in_f} -> {out_f} | {rows} | {name} | {wrong} |||||||")
                        continue
                    graph, why = graph_cold_us(fn, dev)
                    eager, host = eager_us(fn, dev), host_us(fn, dev)
                    profiled = not smoke and rows in PROFILED_BATCHES  # a profiler run costs ~1 s
                    kernels = kernel_times(fn, dev) if profiled else []
                    gbps = case.min_bytes / graph / 1e3 if graph > 0 else math.nan
                    best = min(best, graph) if not math.isnan(graph) else best
                    listed = ", ".join(f"{short(k)} {us:.1f}" for k, us in kernels[:4]) or why or "-"
                    section.add(
                        f"| {in_f} -> {out_f} | {rows} | {name} | {fmt(graph)} | {fmt(eager)} | {fmt(host)} | "
                        f"{case.min_bytes / 1e6:.2f} | {fmt(gbps, 0)} | {fmt(100 * gbps / copy, 0)}% | {listed} |"
                    )
            if rows >= GOAL_BATCH:
                goal_shares.append(case.min_bytes / best / 1e3 / copy if best < math.inf else math.nan)
    return goal_shares


def prefill_rows(section: Section, dev: Any, smoke: bool) -> None:
    import torch

    shapes = SMOKE_SHAPES if smoke else GPU_SHAPES
    lengths, adapters = ([5, 3, 7], 2) if smoke else ([256] * 8, 8)
    section.add(
        "",
        f"### Prefill, {len(lengths)} segments of {lengths[0]} tokens, {adapters} adapters (SGMV)",
        "",
        "| in -> out | tokens | graph µs (cold L2) | eager µs | CPU µs/op | base GEMM µs | LoRA / base |",
        "|---|---|---|---|---|---|---|",
    )
    for seed, (in_f, out_f) in enumerate(shapes):
        case = make_case(dev, in_f, out_f, lengths, adapters, 100 + seed)
        fn = methods(case)["sgmv"]
        weight = torch.randn(out_f, in_f, device=dev).to(case.x.dtype)
        with torch.inference_mode():
            wrong = check(case, fn)
            if wrong:
                section.status = "failed"
                section.add(f"| {in_f} -> {out_f} | {sum(lengths)} | {wrong} |||||")
                continue
            graph, _ = graph_cold_us(fn, dev)
            eager, host = eager_us(fn, dev), host_us(fn, dev)
            gemm = lambda x=case.x, w=weight: x @ w.T  # noqa: E731
            base, _ = graph_cold_us(gemm, dev)
            base = base if not math.isnan(base) else eager_us(gemm, dev)
        lora = graph if not math.isnan(graph) else eager
        section.add(
            f"| {in_f} -> {out_f} | {sum(lengths)} | {fmt(graph)} | {fmt(eager)} | {fmt(host)} | {fmt(base)} | "
            f"{fmt(lora / base, 2)} |"
        )


def main(argv: list[str] | None = None) -> None:
    args = section_args(__doc__, argv)
    section = Section("kernels", "LoRA kernels against copy bandwidth")
    if skip_unless_importable(section, args.out, "triton"):
        return
    import torch
    import triton

    dev = device(args.smoke_cpu)
    copy = copy_gbps(dev, (16 << 20) if args.smoke_cpu else (1 << 30))
    section.add(
        f"torch {torch.__version__}, triton {triton.__version__}; device-to-device copy "
        f"({'16 MiB' if args.smoke_cpu else '1 GiB'}): {copy:.0f} GB/s (read + write)",
        "",
    )
    shares = decode_rows(section, dev, copy, args.smoke_cpu)
    prefill_rows(section, dev, args.smoke_cpu)
    attention_rows(section, dev, copy, args.smoke_cpu)  # paged decode attention: Triton vs gather + SDPA
    worst = min(shares) if shares and not any(math.isnan(s) for s in shares) else math.nan
    section.goals.append(
        Goal(
            f"kernels at batch >= {GOAL_BATCH}: the worst shape's best kernel (graph, cold L2) vs copy",
            "not measured (no CUDA graphs)" if math.isnan(worst) else f"{100 * worst:.0f}%",
            f">= {100 * GOAL_SHARE:.0f}%",
            None if math.isnan(worst) else worst >= GOAL_SHARE,
        )
    )
    section.save(args.out)


if __name__ == "__main__":
    main()
