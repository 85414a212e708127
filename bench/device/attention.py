"""Part of section `kernels`: paged decode attention, the Triton kernel over block tables
(kernels/paged_attention.py) against the torch path it replaces (adapters_core/paged/attention.py: gather every
row's blocks into a contiguous copy, then SDPA with a key mask), at Llama-3-8B attention geometry (32 query
heads, 8 KV heads, head width 128, bf16, blocks of 16 positions, shuffled), one layer.

Per (rows, context): device µs replayed in a CUDA graph with a cold L2 and eager µs for both paths, the KV
bytes the step must read at least (every row's keys and values once), and the kernel's GB/s over that. The
kernel's output is checked against the torch path first (bf16: within 2e-2 of it; WRONG fails the section).
Goal (issue 16, "no per-step KV copy"): the kernel no slower than gather + SDPA at 64 rows × 2,048 keys.
"""

from __future__ import annotations

import math
from typing import Any

from bench.device.common import Goal, Section, eager_us, fmt, graph_cold_us

GPU_GEOMETRY = (32, 8, 128, 16)  # query heads, KV heads, head width, block size
SMOKE_GEOMETRY = (4, 2, 16, 4)
GPU_SHAPES = [(1, 2048), (64, 256), (64, 2048), (256, 2048)]  # (rows, context)
SMOKE_SHAPES = [(4, 40)]
GOAL_SHAPE = (64, 2048)


def make_case(
    dev: Any, rows: int, context: int, geometry: tuple[int, int, int, int], seed: int
) -> dict[str, Any]:
    """A pool holding `rows` rows of `context` keys in shuffled blocks (block 0 the scratch), and their query."""
    import torch

    hq, hkv, hd, bs = geometry
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    gen = torch.Generator(device=dev).manual_seed(seed)
    per_row = -(-context // bs)
    num_blocks = 1 + rows * per_row
    k = torch.randn(hkv, num_blocks * bs, hd, generator=gen, device=dev).to(dtype)  # (Hkv, slots, hd)
    v = torch.randn(hkv, num_blocks * bs, hd, generator=gen, device=dev).to(dtype)
    order = torch.randperm(num_blocks - 1, generator=torch.Generator().manual_seed(seed)) + 1
    tables = order.view(rows, per_row).to(dev)  # (B, nb) shuffled blocks
    lengths = torch.full((rows,), context, dtype=torch.long, device=dev)
    q = torch.randn(rows, hq, hd, generator=gen, device=dev).to(dtype)
    min_bytes = 2 * rows * context * hkv * hd * k.element_size()
    return {"q": q, "k": k, "v": v, "tables": tables, "lengths": lengths, "bs": bs, "min_bytes": min_bytes}


def paths(case: dict[str, Any]) -> dict[str, Any]:
    import torch

    from adapters_core.paged import attention
    from kernels import paged_attention

    q, k, v, tables, lengths, bs = (case[n] for n in ("q", "k", "v", "tables", "lengths", "bs"))
    scale = q.shape[-1] ** -0.5
    width = tables.shape[1] * bs
    mask = (lengths[:, None] > torch.arange(width, device=q.device)[None])[:, None, None]  # (B, 1, 1, S)

    def gather_sdpa() -> Any:
        keys, values = attention._gather(k, tables, bs), attention._gather(v, tables, bs)  # (B, Hkv, S, hd)
        return attention._attend(q[:, :, None], keys, values, mask, scale, None)[:, :, 0]

    def triton() -> Any:
        return paged_attention.decode_attention(q, k, v, tables, lengths, block_size=bs, scale=scale)

    return {"triton": triton, "gather+sdpa": gather_sdpa}


def attention_rows(section: Section, dev: Any, copy: float, smoke: bool) -> None:
    """The paged decode attention table and its goal (module docstring)."""
    import importlib.util

    import torch

    if importlib.util.find_spec("transformers") is None:  # the torch path lives in adapters_core
        section.add("", "Paged decode attention: skipped (needs transformers for the gather + SDPA path).")
        return
    geometry, shapes = (SMOKE_GEOMETRY, SMOKE_SHAPES) if smoke else (GPU_GEOMETRY, GPU_SHAPES)
    hq, hkv, hd, bs = geometry
    section.add(
        "",
        f"### Paged decode attention, {hq}/{hkv} heads of {hd}, blocks of {bs} (shuffled), one layer, "
        f"{'float32 (smoke)' if smoke else 'bf16'}",
        "",
        "| rows | context | path | graph µs (cold L2) | eager µs | min KV MB | GB/s (graph) | % copy |",
        "|---|---|---|---|---|---|---|---|",
    )
    at_goal: dict[str, float] = {}
    for seed, (rows, context) in enumerate(shapes):
        case = make_case(dev, rows, context, geometry, seed)
        fns = paths(case)
        with torch.inference_mode():
            want = fns["gather+sdpa"]().float()
            err = (fns["triton"]().float() - want).abs().max().item()
            if err > (2e-2 if dev.type == "cuda" else 1e-4):
                section.status = "failed"
                section.add(
                    f"| {rows} | {context} | triton | WRONG: max abs err {err:.3g} vs gather+sdpa |||||"
                )
                continue
            for name, fn in fns.items():
                graph, why = graph_cold_us(fn, dev)
                eager = eager_us(fn, dev)
                us = graph if not math.isnan(graph) else eager
                gbps = case["min_bytes"] / us / 1e3
                if (rows, context) == GOAL_SHAPE:
                    at_goal[name] = us
                section.add(
                    f"| {rows} | {context} | {name} | {why or fmt(graph)} | {fmt(eager)} | "
                    f"{case['min_bytes'] / 1e6:.1f} | {fmt(gbps, 0)} | {fmt(100 * gbps / copy, 0)}% |"
                )
        del case, fns
    if not smoke:
        ratio = at_goal["triton"] / at_goal["gather+sdpa"] if len(at_goal) == 2 else math.nan
        section.goals.append(
            Goal(
                f"(issue 16) paged decode attention, {GOAL_SHAPE[0]} rows x {GOAL_SHAPE[1]} keys: Triton / gather+SDPA µs",
                "not measured" if math.isnan(ratio) else f"{ratio:.2f}x",
                "<= 1.0x",
                None if math.isnan(ratio) else ratio <= 1.0,
            )
        )
