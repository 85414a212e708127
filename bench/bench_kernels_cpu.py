"""CPU benchmark: the kernels' reference path against PEFT's per-adapter loop, on decode shapes.

Both apply the same LoRA adapters to one mixed decode batch (one token per row, every row its own adapter
slot) of one linear layer, measured side by side in one run (interleaved repetitions, medians):

- loop:      what PEFT's `LoraLayer._mixed_batch_forward` does for every layer: per unique adapter, find
             its rows, gather them, run lora_A and lora_B (nn.Linear), scatter-add into the result.
- reference: `kernels.lora_apply(..., backend="torch")` over a `LoraPool`, with a `BatchMeta` built once
             per forward (its build time is shown apart: a model shares it across all its layers).
- base:      the frozen layer itself (`x @ W.T`, H x H), for scale.

Run: .venv/bin/python bench/bench_kernels_cpu.py [--reps 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import LoraPool, build_decode_meta, lora_apply

RANKS = (8, 16, 32, 64)  # adapter i has rank RANKS[i % 4]: mixed ranks in every batch


class PeftStyleLoop(nn.Module):
    """The per-adapter loop of PEFT's mixed-batch LoRA forward (dropout off), one layer."""

    def __init__(self, adapters: list[tuple[torch.Tensor, torch.Tensor, float]]) -> None:
        super().__init__()
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        for i, (a, b, scale) in enumerate(adapters):
            name = f"adapter{i}"
            self.lora_A[name] = nn.Linear(a.shape[1], a.shape[0], bias=False)
            self.lora_B[name] = nn.Linear(b.shape[1], b.shape[0], bias=False)
            self.lora_A[name].weight.data.copy_(a)
            self.lora_B[name].weight.data.copy_(b)
            self.scaling[name] = scale

    def forward(self, result: torch.Tensor, x: torch.Tensor, adapter_names: list[str]) -> torch.Tensor:
        unique = set(adapter_names)
        # Rebuilt on every call, as PEFT does in every adapted layer.
        sub_batch_indices = [[i for i, name in enumerate(adapter_names) if name == ad] for ad in unique]
        for active, indices in zip(unique, sub_batch_indices):
            if active not in self.lora_A:
                continue
            lora_a, lora_b = self.lora_A[active], self.lora_B[active]
            sub_batch = x[indices].to(lora_a.weight.dtype)
            out = lora_b(lora_a(sub_batch)) * self.scaling[active]
            result[indices] += out.to(result.dtype)
        return result


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def side_by_side(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 10) -> dict[str, float]:
    """Median microseconds of each fn; repetitions interleaved (rotating order) so drift hits all alike."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            start = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: median_us(s) for name, s in samples.items()}


def run_shape(hidden: int, rows: int, n_adapters: int, reps: int, seed: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    adapters = []
    for i in range(n_adapters):
        r = RANKS[i % len(RANKS)]
        a = torch.randn(r, hidden, generator=gen) / hidden**0.5
        b = torch.randn(hidden, r, generator=gen) / r**0.5
        adapters.append((a, b, 2.0 / r))
    slots = torch.randint(0, n_adapters, (rows,), generator=gen).tolist()
    x = torch.randn(rows, hidden, generator=gen)  # (T, H)
    y0 = torch.randn(rows, hidden, generator=gen)  # (T, H)
    w_base = torch.randn(hidden, hidden, generator=gen) / hidden**0.5  # (H, H)

    pool = LoraPool.from_adapters(list(adapters), dtype=torch.float32)
    loop = PeftStyleLoop(adapters)
    names = [f"adapter{s}" for s in slots]
    meta = build_decode_meta(slots)

    with torch.inference_mode():
        y_loop = loop(y0.clone(), x, names)
        y_ref = lora_apply(y0.clone(), x, pool, meta, backend="torch")
        torch.testing.assert_close(y_ref, y_loop, rtol=1e-5, atol=1e-5)  # same math before timing it
        timings = side_by_side(
            {
                "loop": lambda: loop(y0.clone(), x, names),
                "reference": lambda: lora_apply(y0.clone(), x, pool, meta, backend="torch"),
                "base": lambda: x @ w_base.T,
                "meta": lambda: build_decode_meta(slots),
            },
            reps,
        )
    timings["distinct"] = len(set(slots))
    return timings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--rows", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--adapters", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads (default 1: stable numbers)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, {args.threads} thread(s), float32, ranks cycle {RANKS}, {args.reps} reps"
    )
    header = "| hidden | rows | adapters (in batch) | loop µs | reference µs | speed-up | base layer µs | meta µs |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for seed, (hidden, rows, n_adapters) in enumerate(
        itertools.product(args.hidden, args.rows, args.adapters)
    ):
        t = run_shape(hidden, rows, n_adapters, args.reps, seed)
        print(
            f"| {hidden} | {rows} | {n_adapters} ({int(t['distinct'])}) | {t['loop']:.0f} | {t['reference']:.0f} "
            f"| {t['loop'] / t['reference']:.2f}x | {t['base']:.0f} | {t['meta']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
