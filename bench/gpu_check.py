"""GPU check of the kernels: run the `gpu` kernel tests, then time decode and prefill shapes.

    .venv/bin/python bench/gpu_check.py [--record]          (or: make gpu-check)

1. `pytest -m gpu tests/kernels` with TRITON_INTERPRET=0 (compiled kernels against the reference on CUDA).
2. Bandwidth ceiling: a device-to-device copy, measured in the same run.
3. Decode (one token per row, hidden 4096, bf16, ranks 8-64 mixed, 1-256 rows, 1-256 distinct adapters):
   Triton BGMV and SGMV, the PyTorch reference on CUDA, torch gather+bmm (ranks padded to the max) and
   PEFT's per-adapter loop. GB/s counts the bytes the op must move at least (x, y read+write, u, every
   distinct adapter's A and B once), the same for every method; "% copy" is the best Triton path's GB/s
   over the copy's. Goal: >= 70% of copy bandwidth on decode shapes.
4. Prefill (long segments): Triton SGMV vs the reference vs the loop, and the base layer's GEMM for scale.

Prints markdown tables; `--record` also writes them to bench/results/kernels_gpu_<card>.md. Without CUDA it
exits with status 2 and says so; `--smoke-cpu` runs step 3-4 on tiny shapes with TRITON_INTERPRET=1 (checks
the script's code paths and every method's numbers against the reference, not speed).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANKS = (8, 16, 32, 64)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--record", action="store_true", help="write the tables to bench/results/")
    parser.add_argument("--skip-tests", action="store_true", help="only the timings")
    parser.add_argument(
        "--smoke-cpu", action="store_true", help="tiny shapes on CPU under TRITON_INTERPRET=1"
    )
    return parser.parse_args(argv)


ARGS = parse_args(None if __name__ == "__main__" else [])
# Must be decided before Triton is imported: compiled kernels on CUDA, the interpreter only for the smoke run.
os.environ["TRITON_INTERPRET"] = "1" if ARGS.smoke_cpu else "0"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from bench_kernels_cpu import PeftStyleLoop  # noqa: E402

from kernels import LoraPool, build_decode_meta, build_prefill_meta, lora_apply  # noqa: E402

Fn = Callable[[], object]


def graph_us(fn: Fn) -> float:
    """Median microseconds of `fn` replayed in a CUDA graph (no host overhead, no L2 flush); nan if the
    function cannot be captured (the reference and the loop sync with the host)."""
    import triton.testing

    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")) * 1e3
    except Exception as err:  # capture errors vary by torch/CUDA version; report, don't hide
        print(f"  (CUDA graph capture failed: {type(err).__name__}: {str(err)[:120]})", flush=True)
        return float("nan")


def timer_us(fn: Fn, device: torch.device) -> float:
    """Median microseconds of `fn` (CUDA: triton's do_bench with CUDA events; CPU smoke: perf_counter)."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")) * 1e3
    fn()
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def copy_gbps(device: torch.device, nbytes: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / timer_us(lambda: dst.copy_(src), device) / 1e3  # read + write


class Shape:
    """One batch of one layer: adapters (padded stacks too, for gather+bmm), inputs, metadata."""

    def __init__(self, hidden: int, row_lengths: list[int], n_adapters: int, device: torch.device, seed: int):
        gen = torch.Generator(device=device).manual_seed(seed)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.hidden, self.device, self.dtype = hidden, device, dtype
        self.ranks = [RANKS[i % len(RANKS)] for i in range(n_adapters)]
        self.adapters = [
            (
                (torch.randn(r, hidden, generator=gen, device=device) / hidden**0.5).to(dtype),
                (torch.randn(hidden, r, generator=gen, device=device) / r**0.5).to(dtype),
                2.0 / r,
            )
            for r in self.ranks
        ]
        self.slots = [i % n_adapters for i in range(len(row_lengths))]  # every adapter has rows
        self.decode = all(n == 1 for n in row_lengths)
        self.meta = (
            build_decode_meta(self.slots) if self.decode else build_prefill_meta(self.slots, row_lengths)
        ).to(device)
        self.meta_sgmv = build_prefill_meta(self.slots, row_lengths).to(device)
        tokens = self.meta.num_tokens
        self.x = torch.randn(tokens, hidden, generator=gen, device=device).to(dtype)  # (T, H)
        self.y = torch.randn(tokens, hidden, generator=gen, device=device).to(dtype)  # (T, H)
        self.pool = LoraPool.from_adapters(list(self.adapters), dtype=dtype, device=device)
        self.loop = PeftStyleLoop([(a.float(), b.float(), s) for a, b, s in self.adapters]).to(device, dtype)
        # PEFT indexes rows of a padded (B, L, H) batch: possible here when every row has the same length.
        self.equal_rows = len(set(row_lengths)) == 1
        self.names = [f"adapter{s}" for s in self.slots]
        self.min_bytes = self._min_bytes()

    def _min_bytes(self) -> int:
        act = self.x.element_size()
        tokens, r_max = self.meta.num_tokens, max(self.ranks)
        weights = sum(r * 2 * self.hidden for r in self.ranks) * self.adapters[0][0].element_size()
        return tokens * self.hidden * act * 3 + weights + 2 * tokens * r_max * 4

    def gather_bmm(self) -> Fn:
        """Per-token gathered weights, ranks zero-padded to the max: (T, R, H) copies, then two bmm."""
        r_max, n = max(self.ranks), len(self.adapters)
        a_stack = torch.zeros(n, r_max, self.hidden, dtype=self.dtype, device=self.device)  # (N, R, H)
        b_stack = torch.zeros(n, self.hidden, r_max, dtype=self.dtype, device=self.device)  # (N, H, R)
        for i, (a, b, _) in enumerate(self.adapters):
            a_stack[i, : a.shape[0]] = a
            b_stack[i, :, : b.shape[1]] = b
        scales = torch.tensor([s for _, _, s in self.adapters], device=self.device)
        slots = self.meta.token_slots

        def run() -> torch.Tensor:
            u = torch.bmm(self.x.unsqueeze(1), a_stack[slots].transpose(1, 2))  # (T, 1, R)
            delta = torch.bmm(u, b_stack[slots].transpose(1, 2)).squeeze(1)  # (T, H)
            return self.y.add_((delta.float() * scales[slots, None]).to(self.dtype))

        return run

    def methods(self, with_bmm: bool) -> dict[str, Fn]:
        fns: dict[str, Fn] = {}
        if self.decode:
            fns["triton bgmv"] = lambda: lora_apply(self.y, self.x, self.pool, self.meta, backend="triton")
        fns["triton sgmv"] = lambda: lora_apply(self.y, self.x, self.pool, self.meta_sgmv, backend="triton")
        fns["torch reference"] = lambda: lora_apply(self.y, self.x, self.pool, self.meta, backend="torch")
        if with_bmm:
            fns["gather+bmm"] = self.gather_bmm()
        if self.equal_rows:
            rows = len(self.slots)
            x3, y3 = self.x.view(rows, -1, self.hidden), self.y.view(rows, -1, self.hidden)  # (B, L, H)
            fns["per-adapter loop"] = lambda: self.loop(y3, x3, self.names)
        return fns


def check_against_reference(shape: Shape, fns: dict[str, Fn]) -> None:
    """Every method applied once to a fresh y must match the reference (bf16: 4 ulps of max|y|)."""
    y0 = shape.y.clone()
    expected = lora_apply(y0.clone(), shape.x, shape.pool, shape.meta, backend="torch").float()
    tol = 4 * 2.0**-7 if shape.dtype == torch.bfloat16 else 1e-4  # baselines round u and delta to bf16 too
    for name, fn in fns.items():
        shape.y.copy_(y0)
        with torch.inference_mode():
            fn()
        err = (shape.y.float() - expected).abs().max().item()
        if err > tol * expected.abs().max().item():
            raise SystemExit(f"gpu_check: {name} disagrees with the reference (max abs err {err:.3g})")
    shape.y.copy_(y0)


def decode_table(device: torch.device, copy: float, smoke: bool) -> list[str]:
    hidden = 64 if smoke else 4096
    grid = (
        [(4, 1), (8, 8)]
        if smoke
        else [(1, 1), (16, 1), (16, 16), (64, 1), (64, 16), (64, 64), (256, 32), (256, 256)]
    )
    cols = ["triton bgmv", "triton sgmv", "torch reference", "gather+bmm", "per-adapter loop"]
    lines = [
        f"Decode, hidden {hidden}, {'float32' if smoke else 'bf16'}, ranks {RANKS} mixed; µs per layer, median.",
        "Eager = do_bench (L2 flushed, host launch overhead included); graph = CUDA-graph replay (kernels only).",
        "GB/s = minimal bytes / best Triton time; % copy against the copy above; vs = eager time ratios.",
        "",
        "| rows | adapters | "
        + " | ".join(f"{c} µs" for c in cols)
        + " | bgmv graph µs | sgmv graph µs | GB/s eager | % copy | GB/s graph | vs bmm | vs loop |",
        "|---" * (len(cols) + 9) + "|",
    ]
    for seed, (rows, n_adapters) in enumerate(grid):
        shape = Shape(hidden, [1] * rows, n_adapters, device, seed)
        fns = shape.methods(with_bmm=True)
        check_against_reference(shape, fns)
        with torch.inference_mode():
            us = {name: timer_us(fn, device) for name, fn in fns.items()}
            graph = {n: graph_us(fns[n]) if device.type == "cuda" else float("nan") for n in cols[:2]}
        best = min(us["triton bgmv"], us["triton sgmv"])
        best_graph = min(graph.values())
        gbps, gbps_graph = shape.min_bytes / best / 1e3, shape.min_bytes / best_graph / 1e3
        lines.append(
            f"| {rows} | {n_adapters} | "
            + " | ".join(f"{us[c]:.1f}" for c in cols)
            + f" | {graph[cols[0]]:.1f} | {graph[cols[1]]:.1f} | {gbps:.0f} | {100 * gbps / copy:.0f}% | "
            f"{gbps_graph:.0f} | {us['gather+bmm'] / best:.2f}x | {us['per-adapter loop'] / best:.2f}x |"
        )
        print(lines[-1], flush=True)
    return lines


def prefill_table(device: torch.device, smoke: bool) -> list[str]:
    hidden = 64 if smoke else 4096
    grid = (
        [([5, 3, 7], 2)]
        if smoke
        else [([512] * 4, 4), ([256] * 16, 8), ([1024] * 8, 8), ([64, 2000, 30, 900], 4)]
    )
    cols = ["triton sgmv", "torch reference", "per-adapter loop"]
    lines = [
        f"Prefill, hidden {hidden}; µs per layer (median); base = the frozen layer's GEMM on the same tokens",
        "",
        "| tokens | rows | adapters | "
        + " | ".join(f"{c} µs" for c in cols)
        + " | base µs | LoRA / base | vs loop |",
        "|---" * (len(cols) + 6) + "|",
    ]
    for seed, (lengths, n_adapters) in enumerate(grid):
        shape = Shape(hidden, lengths, n_adapters, device, 100 + seed)
        fns = shape.methods(with_bmm=False)  # gather+bmm would copy (T, R, H) weights: GBs at these sizes
        check_against_reference(shape, fns)
        w_base = torch.randn(hidden, hidden, device=device).to(shape.dtype)
        with torch.inference_mode():
            us = {name: timer_us(fn, device) for name, fn in fns.items()}
            base = timer_us(lambda x=shape.x, w=w_base: x @ w.T, device)
        loop = us.get("per-adapter loop", float("nan"))
        lines.append(
            f"| {shape.meta.num_tokens} | {len(lengths)} | {n_adapters} | "
            + " | ".join(f"{us.get(c, float('nan')):.1f}" for c in cols)
            + f" | {base:.1f} | {us['triton sgmv'] / base:.2f} | {loop / us['triton sgmv']:.2f}x |"
        )
        print(lines[-1], flush=True)
    return lines


def run_gpu_tests() -> tuple[bool, str]:
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/kernels", "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    if proc.returncode != 0:
        print(proc.stdout[-6000:], proc.stderr[-3000:], sep="\n")
    return proc.returncode == 0, summary


def main() -> int:
    smoke = ARGS.smoke_cpu
    if not smoke and not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False). "
            "Run it on a machine with an NVIDIA GPU and the CUDA build of torch; `--smoke-cpu` only checks the "
            "script on CPU.",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cpu" if smoke else "cuda")
    card = "cpu (smoke)" if smoke else torch.cuda.get_device_name(device)
    import triton

    header = [f"# kernels on {card}", "", f"torch {torch.__version__}, triton {triton.__version__}", ""]
    print("\n".join(header), flush=True)
    ok = True
    if not (smoke or ARGS.skip_tests):
        ok, summary = run_gpu_tests()
        header += [f"`pytest -m gpu tests/kernels`: {summary}", ""]
        print(header[-2], flush=True)
    copy = copy_gbps(device, (1 << 20) if smoke else (1 << 30))
    header += [f"device-to-device copy: {copy:.0f} GB/s (read + write)", ""]
    print(header[-2], flush=True)
    lines = [*header, *decode_table(device, copy, smoke), "", *prefill_table(device, smoke)]
    if ARGS.record:
        slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")
        out = ROOT / "bench" / "results" / f"kernels_gpu_{slug}.md"
        out.parent.mkdir(exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        print(f"\nwrote {out.relative_to(ROOT)}")
    if not ok:
        print("gpu_check: the gpu kernel tests FAILED (output above)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
