"""CPU benchmark: host (Python) microseconds per adapted-module call, the part a GPU step pays per module on
top of its kernel launches (issue 18: "60–120 µs of Python per adapted module").

Three timings, medians of interleaved repetitions, on a tiny layer (so the arithmetic is negligible):

- launch path: `kernels.lora_apply(..., backend="triton")` with the Triton kernels replaced by no-op
  recorders: everything a GPU call does on the host except Triton's own launch (backend choice, pool views,
  validation, the `u` buffer and its memset, launch sizing, the device guard);
- layer, launch path: a `MultiLinear` (q_proj-like, LoRA only) forward in a decode batch, same stubs, and
  the same minus the bare `F.linear` (the wrapper's own host work plus the LoRA call);
- ia3 launch path: `kernels.ia3_scale_output(..., backend="triton")`, stubbed likewise.

Run (from the checkout to measure; PYTHONPATH picks the code):
    PYTHONPATH=$PWD .venv/bin/python bench/bench_layer_overhead.py [--reps 3000] [--rows 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ["TRITON_INTERPRET"] = "1"  # lets the Triton backend run on CPU tensors; the kernels are stubbed
os.environ["SWAPYARD_KERNELS"] = "triton"  # the layer takes the launch path too
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch import nn

from adapters_core.multi.context import ContextHolder, RowContext
from adapters_core.multi.layers import MultiLinear, PoolBudget
from adapters_core.multi.parsed import LoraTensors
from kernels import (
    IA3Pool,
    LoraPool,
    build_decode_meta,
    ia3_scale_output,
    lora_apply,
    triton_ia3,
    triton_lora,
)


class _NoLaunch:
    """Stands in for a `@triton.jit` kernel: `kernel[grid](*args)` does nothing."""

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def stub_kernels() -> None:
    for module in (triton_lora, triton_ia3):
        for name in dir(module):
            if name.startswith("_") and name.endswith("_kernel"):
                setattr(module, name, _NoLaunch())


def interleaved_medians(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median µs of each fn, repetitions interleaved so that load changes (a shared CPU) hit all alike."""
    for _ in range(50):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) * 1e6 for name, s in samples.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3000)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    stub_kernels()
    h, rows = args.hidden, args.rows
    gen = torch.Generator().manual_seed(0)
    slots = [i % 8 for i in range(rows)]
    meta = build_decode_meta(slots)
    x = torch.randn(rows, h, generator=gen)
    y = torch.randn(rows, h, generator=gen)

    pool = LoraPool.from_adapters(
        [(torch.randn(16, h, generator=gen), torch.randn(h, 16, generator=gen), 0.5) for _ in range(8)],
        dtype=torch.float32,
        rank_capacity=64,
    )
    ia3 = IA3Pool(h, budget_bytes=8 * 8 + 8 * h * 4, num_slots=8, dtype=torch.float32)
    for s in range(8):
        ia3.load(s, torch.rand(h, generator=gen) + 0.5)

    holder = ContextHolder()
    base = nn.Linear(h, h, bias=False)
    layer = MultiLinear(base, "q_proj", holder, PoolBudget(64 << 20, 2 * h, 8, 64))
    for s in range(8):
        a, b = torch.randn(16, h, generator=gen), torch.randn(h, 16, generator=gen)
        layer.load_lora(s, LoraTensors(a=a, b=b, scale=0.5))
    holder.current = RowContext(list(slots))
    x3 = x.view(rows, 1, h)

    timings = interleaved_medians(
        {
            "lora_apply (launch path)": lambda: lora_apply(y, x, pool, meta, backend="triton"),
            "ia3_scale_output (launch path)": lambda: ia3_scale_output(y, ia3, meta, backend="triton"),
            "MultiLinear forward (launch path)": lambda: layer(x3),
            "F.linear alone": lambda: F.linear(x3, base.weight),
        },
        args.reps,
    )
    timings["MultiLinear forward - F.linear"] = (
        timings["MultiLinear forward (launch path)"] - timings["F.linear alone"]
    )
    print(f"torch {torch.__version__}, 1 thread, decode batch of {rows} rows, hidden {h}, {args.reps} reps")
    print("| host work per call | median µs |")
    print("|---|---|")
    for name, us in timings.items():
        print(f"| {name} | {us:.1f} |")


if __name__ == "__main__":
    main()
