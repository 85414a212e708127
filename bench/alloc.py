"""The memory a step allocates, followed storage by storage: `AllocCounter` (a TorchDispatchMode), and
`paged_decode_counter`, one paged decode step of a model measured with it. Shared by bench_engine_cpu.py and
the tests that hold the decode step's transient memory flat (tests/adapters_core/test_paged_decode_memory.py).
Deterministic: it counts bytes, not time.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from adapters_core.paged import SeqChunk, StepPlan


class AllocCounter(TorchDispatchMode):
    """The storages each op creates (outputs not aliasing an input): bytes by op name (the cumulative total),
    and the peak of the bytes among them alive at once (a storage is freed when the last tensor over it
    dies) — the step's transient memory above the steady state, which is what "memory per decode step" means.
    Allocations inside one op that it frees before returning are not seen (ATen-level only)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: dict[str, int] = defaultdict(int)
        self.live: dict[int, list[int]] = {}  # data_ptr -> [bytes, tensors over it]
        self.now = self.peak = 0
        self.alive = 0

    def retained(self) -> int:
        """Bytes of the storages created under the mode that are still alive (kept by the model's state)."""
        return self.now

    def _drop(self, ptr: int) -> None:
        entry = self.live[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[ptr]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            ptr = t.untyped_storage().data_ptr()
            if ptr not in self.live:
                if ptr in inputs:
                    continue  # a view of something made before the step
                nbytes = t.untyped_storage().nbytes()
                self.by_op[func.__name__] += nbytes
                self.live[ptr] = [nbytes, 0]
                self.now += nbytes
                self.peak = max(self.peak, self.now)
            self.live[ptr][1] += 1
            weakref.finalize(t, self._drop, ptr)
        return out


@torch.no_grad()
def paged_decode_counter(
    model: Any, prompts: list[list[int]], block: int, token: int = 5, repeat: int = 0
) -> AllocCounter:
    """Prefill `prompts` (one row each, blocks laid out row after row) on a `MultiAdapterModel` whose pool is
    (re)made here, then count one decode step of every row appending `token`. `counter.alive`: what is still
    alive while the step's logits are held, as the engine holds them. `repeat` more untimed decode steps of the
    same plan run first (warm-up: whatever a first call caches is not counted)."""
    lengths = [len(p) for p in prompts]
    per_row = -(-(max(lengths) + 2) // block)
    model.init_kv_cache(1 + per_row * len(prompts), block)
    tables = [list(range(1 + r * per_row, 1 + (r + 1) * per_row)) for r in range(len(prompts))]
    model.paged_step(StepPlan([SeqChunk(r, None, p, 0, tables[r]) for r, p in enumerate(prompts)]))
    plan = StepPlan([SeqChunk(r, None, [token], n, tables[r]) for r, n in enumerate(lengths)])
    for _ in range(repeat):
        model.paged_step(plan)
    counter = AllocCounter()
    with counter:
        kept = model.paged_step(plan)
    counter.alive = counter.retained()
    del kept
    return counter
