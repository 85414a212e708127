"""Section `decode`: one decode step at Llama-3-8B geometry (llama.py: 2 layers, 1k context, rank-16
adapters on every linear layer of the blocks), base-only against 32 adapters at batch 64 and 256, and the
issue's goal: 64 rows with 64 distinct adapters against base-only at batch 64.

Step ms: wall time of `paged_step`, eager, the device synchronised (what the engine pays per step today).
Breakdown: torch.profiler's device time per kernel over `PROFILED` steps, each kernel put in one class by its
name (`CLASSES`, first match wins; the ten largest kernels are listed so a reader can check the classes):
GEMM (cuBLAS/CUTLASS/nvjet), LoRA (our Triton kernels), attention (SDPA / flash), KV (block gathers,
index and copy kernels: the paged cache's reads and writes, and casts), other (norms, RoPE, elementwise).
"""

from __future__ import annotations

import re
from functools import partial

from bench.device.common import Goal, Section, device, kernel_times, section_args, skip_unless_importable

CLASSES = [
    ("LoRA", r"bgmv|sgmv|lora|shrink|expand"),
    ("attention", r"attention|attn|flash|fmha|sdpa|softmax|efficient"),
    ("KV", r"index|gather|scatter|copy|cat_|catarray|aten::cat|to_copy"),
    (
        "GEMM",
        r"gemm|nvjet|cutlass|xmma|cublas|aten::mm|aten::addmm|aten::bmm|aten::baddbmm|aten::matmul|sm\d\d_",
    ),
]
PROFILED = 3
GOAL_RATIO = 1.15


def classify(kernel: str) -> str:
    for name, pattern in CLASSES:
        if re.search(pattern, kernel, flags=re.IGNORECASE):
            return name
    return "other"


def breakdown(kernels: list[tuple[str, float]]) -> dict[str, float]:
    """ms per step by class."""
    totals = {name: 0.0 for name, _ in CLASSES} | {"other": 0.0}
    for kernel, us in kernels:
        totals[classify(kernel)] += us / 1e3
    return totals


def main(argv: list[str] | None = None) -> None:
    args = section_args(__doc__, argv)
    section = Section("decode", "Decode step at Llama-3-8B geometry")
    if skip_unless_importable(section, args.out, "transformers", "safetensors"):
        return
    from bench.device.kernels import short
    from bench.device.llama import LLAMA3_8B_2_LAYERS, SMOKE, DecodeBench

    smoke = args.smoke_cpu
    dev = device(smoke)
    geometry = SMOKE if smoke else LLAMA3_8B_2_LAYERS
    batches, shared, distinct = ((4, 8), 2, 8) if smoke else ((64, 256), 32, 64)
    reps = 1 if smoke else 10
    bench = DecodeBench(geometry, dev, adapters=distinct, rank=16, max_rows=max(batches), seed=0)
    section.add(
        f"hidden {geometry.hidden}, {geometry.layers} layers, {geometry.heads}/{geometry.kv_heads} heads, MLP "
        f"{geometry.intermediate}, vocab {geometry.vocab}, context {geometry.context}; rank-16 adapters on all "
        f"7 linear layers of each block; {'float32, CPU (smoke)' if smoke else 'bf16'}. ms per step.",
        "",
        "| rows | adapters | step ms | GEMM | LoRA | attention | KV | other | vs base-only |",
        "|---|---|---|---|---|---|---|---|---|",
    )
    tops: list[str] = []
    ratio_goal = float("nan")
    settings = [(b, a) for b in batches for a in (0, shared)] + [(batches[0], distinct)]
    base_ms: dict[int, float] = {}
    for rows, adapters in settings:
        plan = bench.plan(rows, bench.names_for(rows, adapters))
        ms = bench.step_ms(plan, reps)
        kernels = kernel_times(partial(bench.step, plan), dev, calls=1 if smoke else PROFILED)
        parts = breakdown(kernels)
        if adapters == 0:
            base_ms[rows] = ms
        ratio = ms / base_ms[rows]
        if adapters == distinct:
            ratio_goal = ratio
        section.add(
            f"| {rows} | {adapters or 'none'} | {ms:.2f} | "
            + " | ".join(f"{parts[k]:.2f}" for k in ("GEMM", "LoRA", "attention", "KV", "other"))
            + f" | {ratio:.2f}x |"
        )
        tops.append(
            f"- {rows} rows, {adapters or 'no'} adapters: "
            + ", ".join(f"{short(k)} [{classify(k)}] {us / 1e3:.2f}" for k, us in kernels[:10])
        )
    section.add("", "Largest kernels per step (ms) [class]:", *tops)
    section.goals.append(
        Goal(
            f"decode step, {batches[0]} rows with {distinct} distinct rank-16 adapters vs base-only (eager)",
            f"{ratio_goal:.2f}x",
            f"<= {GOAL_RATIO}x",
            ratio_goal <= GOAL_RATIO,
        )
    )
    section.save(args.out)


if __name__ == "__main__":
    main()
