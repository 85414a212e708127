"""`DecodeGraphRunner`: decode-only steps on the static buffers (static_decode.py), one CUDA graph per shape.

A step of n decode rows whose longest stream needs k blocks runs at the shape (B, nb): B the smallest batch
bucket >= n (1, 2, 4, then multiples of 8, as vLLM's capture sizes), nb the smallest width bucket >= k (powers
of two, capped at `max_blocks`), so that attention gathers about what the rows use, not the longest context the
server allows. On CUDA the first step of a shape warms it up on a side stream (Triton compiles there) and
captures it into a `torch.cuda.CUDAGraph` (all graphs share one memory pool); later steps of that shape copy
their inputs into the static buffers (one host-to-device copy) and replay. Warm-up and capture run with the
step's own inputs, so the keys and values they write are the ones the replay writes again. On the CPU the same
static step runs eagerly (that is what the tests check against `paged_step`).

Graphs bake in what the model's adapters look like (which modules have pools, the largest rank loaded) and the
KV pool's addresses: when an adapter is added or removed (`model._epoch`) or the pool is reallocated, every
graph is dropped and shapes are captured again on their next use.

Timing graph against eager (bench/device_check.sh): build two runners over the same model, `use_graphs=True`
and `use_graphs=False`, call `capture()` on the first, then time `runner.step(plan)` for each (and
`model.paged_step(plan)` for the eager packed step).
"""

from __future__ import annotations

import bisect
from typing import Any

import torch

from . import model_api
from .plan import StepPlan
from .static_decode import Eligibility, StaticBuffers, chunk_row, model_reason, static_step

ALIGN = 8


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, then multiples of 8 up to `max_batch` (which is always the last bucket)."""
    sizes = [b for b in (1, 2, 4) if b < max_batch] + list(range(ALIGN, max_batch, ALIGN))
    return [*sizes, max_batch]


def width_buckets(max_blocks: int) -> list[int]:
    """Powers of two below `max_blocks`, then `max_blocks`."""
    sizes, b = [], 1
    while b < max_blocks:
        sizes.append(b)
        b *= 2
    return [*sizes, max_blocks]


class DecodeGraphRunner:
    """Runs decode-only `StepPlan`s on the static step; CUDA graphs per (batch, width) bucket when `use_graphs`.

    model: a MultiAdapterModel whose KV pool is allocated (`init_kv_cache`). max_batch: rows per step at most
    (the largest bucket). max_blocks: blocks of the longest row (default: every block of the pool).
    use_graphs: capture and replay CUDA graphs (default: when the model is on CUDA; an error on the CPU).
    """

    def __init__(
        self, model: Any, *, max_batch: int, max_blocks: int | None = None, use_graphs: bool | None = None
    ) -> None:
        self.model = model
        self.device: torch.device = model._device()
        if use_graphs is None:
            use_graphs = self.device.type == "cuda"
        if use_graphs and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device; it is on {self.device}.")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}.")
        self.use_graphs = use_graphs
        self.max_batch = max_batch
        self._max_blocks = max_blocks
        self.batch_sizes = batch_buckets(max_batch)
        self.widths: list[int] = []
        self._pool: Any = None
        self._buffers: StaticBuffers | None = None
        self._elig = Eligibility(-1)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._mempool: Any = None
        self.captures = 0  # graphs captured so far (a test and the device script read it)

    # -- state that graphs depend on ----------------------------------------------------------------------
    def _sync_state(self) -> StaticBuffers:
        """Drop graphs (and eligibility) made for another adapter epoch or KV pool; (re)allocate buffers."""
        pool = model_api._state(self.model).pool
        if pool is None:
            raise RuntimeError("DecodeGraphRunner needs the KV pool: call model.init_kv_cache first.")
        if pool is not self._pool or self._buffers is None:
            self._pool = pool
            max_blocks = self._max_blocks or pool.num_blocks - model_api.RESERVED_BLOCKS
            self.widths = width_buckets(max_blocks)
            self._buffers = StaticBuffers(self.max_batch, max_blocks, self.device)
            self._graphs.clear()
        if self._elig.epoch != self.model._epoch:
            self._elig = Eligibility(self.model._epoch)
            self._graphs.clear()
        return self._buffers

    # -- public ----------------------------------------------------------------------------------------
    def why_not(self, plan: StepPlan) -> str | None:
        """None when every chunk of `plan` may run here; else the first reason one may not."""
        if not hasattr(self, "_model_reason"):  # the base does not change: asked once (it walks the modules)
            self._model_reason = model_reason(self.model)
        reason = self._model_reason
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
        """Capture graphs ahead of serving (default: every bucket; `widths` default: every width bucket), with
        padding rows only (each writes the scratch block). Returns how many were captured now."""
        if not self.use_graphs:
            return 0
        buffers = self._sync_state()
        before = self.captures
        for batch in batch_sizes or self.batch_sizes:
            for width in widths or self.widths:
                if (batch, width) not in self._graphs:
                    buffers.fill([], batch, width)
                    self._replay(batch, width)
        return self.captures - before

    # -- running ----------------------------------------------------------------------------------------
    def _eager(self, inputs: Any) -> torch.Tensor:
        state = model_api._state(self.model)
        return static_step(self.model, self._pool, state.cell, inputs, self._elig.static_slots(self.model))

    def _replay(self, batch: int, width: int) -> torch.Tensor:
        """Replay the (batch, width) graph over the filled buffers, capturing it first if needed; the static
        output (B, V), valid until the next replay."""
        key = (batch, width)
        if key not in self._graphs:
            assert self._buffers is not None
            inputs = self._buffers.views(batch, width)
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(
                stream
            ):  # warm-up: Triton compiles, lazy allocations happen, off the graph
                for _ in range(2):
                    self._eager(inputs)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            if self._mempool is None:
                self._mempool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            # thread_local: another thread (the adapter store moving weights to the device) may call CUDA meanwhile
            with torch.cuda.graph(graph, pool=self._mempool, capture_error_mode="thread_local"):
                out = self._eager(inputs)
            self._graphs[key] = (graph, out)
            self.captures += 1
        graph, out = self._graphs[key]
        graph.replay()
        return out
