"""`DecodeGraphRunner`: decode-only steps on the static buffers (static_decode.py), one CUDA graph per shape.

A step of n decode rows whose longest stream needs k blocks runs at the shape (B, nb): B the smallest batch
bucket >= n (1, 2, 4, then multiples of 8, as vLLM's capture sizes), nb the smallest width bucket >= k (powers
of two, capped at `max_blocks`), so that attention gathers about what the rows use, not the longest context the
server allows. Batch buckets coarsen (powers of two up to 16, 32, …, then multiples of that) until there are
at most `max_graphs` shapes (`capture_shapes`; 128 by default: the engine's defaults, 32 rows of 2,048 tokens in
blocks of 16, make 7 x 9 = 63). On CUDA each shape is captured once into a `torch.cuda.CUDAGraph`
(`CudaGraphCapture`: warmed up on a side stream first, where Triton compiles; every graph shares one memory
pool and one output buffer); later steps of that shape copy their inputs into the static buffers (one
host-to-device copy) and replay. The engine captures every shape at start-up (`capture()`, padding rows only:
they write the scratch block), so no step captures while serving; a shape not captured yet is captured at its
first step. On the CPU the same static step runs eagerly (that is what the tests check against `paged_step`).

Graphs bake in what the model's adapters look like (which modules have pools, the largest rank loaded) and the
KV pool's addresses: when an adapter is added or removed (`model._epoch`) or the pool is reallocated, every
graph is dropped and shapes are captured again on their next use.

Timing graph against eager (bench/device_check.sh): build two runners over the same model, `use_graphs=True`
and `use_graphs=False`, call `capture()` on the first, then time `runner.step(plan)` for each (and
`model.paged_step(plan)` for the eager packed step).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

import torch

from . import model_api
from .plan import StepPlan
from .static_decode import Eligibility, StaticBuffers, chunk_row, model_reason, static_step

ALIGN = 8
MAX_GRAPHS = 128  # shapes a runner captures at most (vLLM captures up to ~67 batch sizes of one width)
Replay = Callable[[], torch.Tensor]  # runs a captured step again; returns its (B, V) output


def batch_buckets(max_batch: int, align: int = ALIGN) -> list[int]:
    """Powers of two below `align`, then multiples of `align`, up to `max_batch` (always the last bucket):
    1, 2, 4, 8, 16, 24, … for the default 8."""
    sizes = [1 << i for i in range(align.bit_length() - 1) if 1 << i < max_batch]
    sizes += list(range(align, max_batch, align))
    return [*sizes, max_batch]


def width_buckets(max_blocks: int) -> list[int]:
    """Powers of two below `max_blocks`, then `max_blocks`."""
    sizes, b = [], 1
    while b < max_blocks:
        sizes.append(b)
        b *= 2
    return [*sizes, max_blocks]


def capture_shapes(
    max_batch: int, max_blocks: int, max_graphs: int = MAX_GRAPHS
) -> tuple[list[int], list[int]]:
    """The (batch buckets, width buckets) of a runner: batch buckets aligned to 8, coarsened (16, 32, …: more
    padding rows per step, which a memory-bound decode step barely notices) until batch x width buckets are at
    most `max_graphs`, or the alignment reaches `max_batch`. Width buckets (log2 of the blocks) stay."""
    widths = width_buckets(max_blocks)
    align = ALIGN
    batches = batch_buckets(max_batch, align)
    while len(batches) * len(widths) > max_graphs and align < max_batch:
        align *= 2
        batches = batch_buckets(max_batch, align)
    return batches, widths


class CudaGraphCapture:
    """Captures steps into CUDA graphs that share one memory pool and one output buffer.

    Called with a step, it runs it twice on a side stream (Triton compiles and lazy allocations happen off the
    graph), captures it into a `torch.cuda.CUDAGraph` and returns the replay, whose output (B, V) is a view of a
    buffer (max_rows, V) every graph shares: valid until the next replay. No graph keeps an output of its own, so
    what one capture allocates goes back to the pool for the next (the runner captures the largest shape first).
    """

    def __init__(self, device: torch.device, max_rows: int) -> None:
        self.device, self.max_rows = device, max_rows
        self._pool: Any = None
        self._out: torch.Tensor | None = None

    def __call__(self, run: Replay) -> Replay:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                warm = run()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        (rows, vocab), dtype = warm.shape, warm.dtype
        del warm  # before the capture, which allocates from the graphs' pool
        if self._out is None or self._out.shape[1] != vocab or self._out.dtype != dtype:
            self._out = torch.empty(self.max_rows, vocab, dtype=dtype, device=self.device)
        out = self._out[:rows]
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread (the adapter store moving weights to the device) may call CUDA meanwhile
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            out.copy_(run())

        def replay() -> torch.Tensor:
            graph.replay()
            return out

        return replay


class DecodeGraphRunner:
    """Runs decode-only `StepPlan`s on the static step; CUDA graphs per (batch, width) bucket when `use_graphs`.

    model: a MultiAdapterModel whose KV pool is allocated (`init_kv_cache`). max_batch: rows per step at most
    (the largest bucket). max_blocks: blocks of the longest row (default, and at most: every block of the pool).
    use_graphs: capture and replay graphs (default: when the model is on CUDA, or `capture_with` is given).
    max_graphs: how many shapes at most (`capture_shapes`). capture_with: turns a step into its replay (default
    on CUDA: `CudaGraphCapture`); a stand-in lets the CPU tests check what is captured and when.
    Counters: `captures` (graphs captured so far) and `captured` ((batch, width) of each, in order).
    """

    def __init__(
        self,
        model: Any,
        *,
        max_batch: int,
        max_blocks: int | None = None,
        use_graphs: bool | None = None,
        max_graphs: int = MAX_GRAPHS,
        capture_with: Callable[[Replay], Replay] | None = None,
    ) -> None:
        self.model = model
        self.device: torch.device = model._device()
        if use_graphs is None:
            use_graphs = self.device.type == "cuda" or capture_with is not None
        if use_graphs and capture_with is None:
            if self.device.type != "cuda":
                raise ValueError(f"CUDA graphs need the model on a CUDA device; it is on {self.device}.")
            capture_with = CudaGraphCapture(self.device, max_batch)
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}.")
        self.use_graphs = use_graphs
        self.max_batch = max_batch
        self.max_graphs = max_graphs
        self._max_blocks = max_blocks
        self._capture_with = capture_with
        self.batch_sizes: list[int] = []  # set with the widths, once the KV pool is known (_sync_state)
        self.widths: list[int] = []
        self._pool: Any = None
        self._buffers: StaticBuffers | None = None
        self._elig = Eligibility(-1)
        self._graphs: dict[tuple[int, int], Replay] = {}
        self.captures = 0  # graphs captured so far (tests and the device script read it)
        self.captured: list[tuple[int, int]] = []  # the (batch, width) of each, in capture order

    # -- state that graphs depend on ----------------------------------------------------------------------
    def _sync_state(self) -> StaticBuffers:
        """Drop graphs (and eligibility) made for another adapter epoch or KV pool; (re)allocate buffers."""
        pool = model_api._state(self.model).pool
        if pool is None:
            raise RuntimeError("DecodeGraphRunner needs the KV pool: call model.init_kv_cache first.")
        if pool is not self._pool or self._buffers is None:
            self._pool = pool
            max_blocks = pool.num_blocks - model_api.RESERVED_BLOCKS  # no row holds more than the pool
            max_blocks = min(self._max_blocks or max_blocks, max_blocks)
            self.batch_sizes, self.widths = capture_shapes(self.max_batch, max_blocks, self.max_graphs)
            self._buffers = StaticBuffers(self.max_batch, max_blocks, self.device)
            self._graphs.clear()
        if self._elig.epoch != self.model._epoch:
            self._elig = Eligibility(self.model._epoch)
            self._graphs.clear()
        return self._buffers

    # -- public ----------------------------------------------------------------------------------------
    def base_reason(self) -> str | None:
        """None when the base itself may run on the static step (`static_decode.model_reason`); else why not.
        The base does not change: asked once (it walks the modules)."""
        if not hasattr(self, "_model_reason"):
            self._model_reason = model_reason(self.model)
        return self._model_reason

    def why_not(self, plan: StepPlan) -> str | None:
        """None when every chunk of `plan` may run here; else the first reason one may not."""
        reason = self.base_reason()
        if reason is not None:
            return reason
        buffers = self._sync_state()
        if not plan.chunks:
            return "an empty plan"
        if len(plan.chunks) > self.max_batch:
            return f"{len(plan.chunks)} rows, more than the largest bucket ({self.max_batch})"
        bs = self._pool.block_size
        for chunk in plan.chunks:
            _, why = chunk_row(self.model, self._elig, chunk)
            if why is None and -(-(chunk.start + 1) // bs) > buffers.max_blocks:
                why = f"a row longer than {buffers.max_blocks} blocks"
            if why is not None:
                return f"seq {chunk.seq_id} (adapter {chunk.adapter!r}): {why}"
        return None

    @torch.no_grad()
    def step(self, plan: StepPlan) -> torch.Tensor:
        """The logits `model.paged_step(plan)` returns ((n, V) float, one per chunk with `want_logits`), from the
        static step; raises ValueError when `why_not(plan)` names a reason."""
        reason = self.why_not(plan)
        if reason is not None:
            raise ValueError(f"this step cannot run on the static decode step: {reason}")
        buffers = self._sync_state()
        bs = self._pool.block_size
        rows = []
        for chunk in plan.chunks:
            slot, _ = chunk_row(self.model, self._elig, chunk)
            length = chunk.start + 1
            rows.append((chunk.tokens[0], length, slot, chunk.block_table[: -(-length // bs)]))
        batch = self.batch_sizes[bisect.bisect_left(self.batch_sizes, len(rows))]
        width = self.widths[bisect.bisect_left(self.widths, max(len(r[3]) for r in rows))]
        inputs = buffers.fill(rows, batch, width)
        logits = self._replay(batch, width) if self.use_graphs else self._eager(inputs)
        want = [i for i, c in enumerate(plan.chunks) if c.want_logits]
        if len(want) == len(rows):
            return logits[: len(rows)].clone()
        return logits[torch.tensor(want, dtype=torch.long, device=logits.device)]

    @torch.no_grad()
    def capture(self, batch_sizes: list[int] | None = None, widths: list[int] | None = None) -> int:
        """Capture graphs ahead of serving (default: every batch bucket x every width bucket, the largest
        first so that the smaller ones reuse its memory), with padding rows only (each writes the scratch
        block). Returns how many were captured now; 0 without graphs (the CPU's eager runner)."""
        if not self.use_graphs:
            return 0
        buffers = self._sync_state()
        before = self.captures
        for batch in sorted(batch_sizes or self.batch_sizes, reverse=True):
            for width in sorted(widths or self.widths, reverse=True):
                if (batch, width) not in self._graphs:
                    buffers.fill([], batch, width)
                    self._graph(batch, width)
        return self.captures - before

    # -- running ----------------------------------------------------------------------------------------
    def _eager(self, inputs: Any) -> torch.Tensor:
        state = model_api._state(self.model)
        return static_step(self.model, self._pool, state.cell, inputs, self._elig.static_slots(self.model))

    def _graph(self, batch: int, width: int) -> Replay:
        """The replay of the (batch, width) graph, captured first if it is not yet."""
        key = (batch, width)
        if key not in self._graphs:
            assert self._buffers is not None and self._capture_with is not None
            inputs = self._buffers.views(batch, width)
            self._graphs[key] = self._capture_with(lambda: self._eager(inputs))
            self.captures += 1
            self.captured.append(key)
        return self._graphs[key]

    def _replay(self, batch: int, width: int) -> torch.Tensor:
        """Replay the (batch, width) graph over the filled buffers (capturing it first if needed); the static
        output (B, V), valid until the next replay."""
        return self._graph(batch, width)()
