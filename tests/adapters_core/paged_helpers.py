"""Helpers of the paged-step tests: per family, PEFT oracles of every method and one MultiAdapterModel serving
them (as the arch matrix builds them), and a small engine that drives `paged_step` the way a scheduler would —
prompts prefilled in uneven chunks, rows joining while others decode, blocks handed out from a shuffled free
list so that no row's blocks are contiguous."""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import torch
from arch_configs import Family
from arch_matrix import method_configs, perturb

from adapters_core.multi import MultiAdapterModel
from adapters_core.paged import VIRTUAL, SeqChunk, StepPlan


class Oracles:
    """PEFT per method (None = the base), and the MultiAdapterModel that serves the same adapters."""

    def __init__(self, fam: Family, root: Path, methods: tuple[str, ...]) -> None:
        warnings.simplefilter("ignore")
        self.fam, self.methods = fam, methods
        self.peft: dict[str | None, torch.nn.Module] = {None: fam.build()}
        self.multi = MultiAdapterModel(fam.build())
        for i, (method, cfg) in enumerate(method_configs(fam).items()):
            if method not in methods:
                continue
            pm = peft.get_peft_model(fam.build(), cfg)
            perturb(pm, seed=100 + i)
            pm.eval().save_pretrained(root / method)
            self.multi.add(method, root / method)
            self.peft[method] = pm

    @torch.no_grad()
    def last_logits(self, name: str | None, ids: list[int]) -> torch.Tensor:
        """PEFT's (V,) logits of the last position of `ids`, the row alone."""
        x = torch.tensor([ids])
        return self.peft[name](input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1].float()


class MiniEngine:
    """Drives paged_step: every row streams `[v virtual][prompt][generated]`; each step takes one chunk of every
    row that still prefills (sizes from `chunk_sizes`, cycled) and one token of every decoding row."""

    def __init__(
        self, model: Any, num_blocks: int, block_size: int, chunk_sizes: list[int], seed: int = 0
    ) -> None:
        self.model, self.block_size = model, block_size
        model.init_kv_cache(num_blocks, block_size)
        self.free = list(range(model.reserved_blocks, num_blocks))
        random.Random(seed).shuffle(self.free)
        self.chunk_sizes, self.turn = chunk_sizes, 0
        self.rows: dict[int, dict[str, Any]] = {}

    def join(self, seq_id: int, adapter: str | None, prompt: list[int]) -> None:
        v = self.model.stream_prefix_length(adapter)
        self.rows[seq_id] = {
            "adapter": adapter,
            "stream": [VIRTUAL] * v + list(prompt),
            "done": 0,
            "blocks": [],
        }

    def step(self, on_logits: Callable[[int, torch.Tensor], int]) -> StepPlan:
        """One paged step; `on_logits(seq_id, logits)` returns the token the row appends (its greedy pick)."""
        chunks = []
        for seq_id, row in self.rows.items():
            stream, done = row["stream"], row["done"]
            if done == len(stream):
                continue
            size = self.chunk_sizes[self.turn % len(self.chunk_sizes)] if len(stream) - done > 1 else 1
            self.turn += 1
            tokens = stream[done : done + size]
            end = done + len(tokens)
            while len(row["blocks"]) * self.block_size < end:
                row["blocks"].append(self.free.pop())
            chunks.append(
                SeqChunk(seq_id, row["adapter"], tokens, done, list(row["blocks"]), end == len(stream))
            )
            row["done"] = end
        plan = StepPlan(chunks)
        logits = self.model.paged_step(plan)
        wanted = [c for c in chunks if c.want_logits]
        assert logits.shape[0] == len(wanted)
        for chunk, row_logits in zip(wanted, logits):
            self.rows[chunk.seq_id]["stream"].append(on_logits(chunk.seq_id, row_logits))
        return plan
