"""Helpers of the paged-step tests: per family, PEFT oracles of every method and one MultiAdapterModel serving
them (as the arch matrix builds them), and two small engines that drive `paged_step` the way a scheduler would:
`MiniEngine` (prompts prefilled in uneven chunks, rows joining while others decode) and `GreedyEngine` (rows of
causal and encoder-decoder bases join, decode greedily and leave, their blocks going back); both hand blocks
out from a shuffled free list so that no row's blocks are contiguous."""

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


class GreedyEngine:
    """A minimal greedy continuous-batching loop over `paged_step`, recording every row's tokens and logits: an
    admitted row's stream (virtual positions and prompt; an encoder-decoder's `[decoder_start]`, its prompt
    going to the encoder) is prefilled whole in the next step beside the running rows' decode tokens; blocks
    come from a shuffled free list and go back when a row leaves."""

    BLOCK = 4

    def __init__(self, model: Any, eos: int, num_blocks: int = 256) -> None:
        self.model, self.eos = model, eos
        model.init_kv_cache(num_blocks, self.BLOCK)
        self.free = list(range(model.reserved_blocks, num_blocks))
        random.Random(0).shuffle(self.free)
        self.decoder = model.paged_decoder_prompt()
        self.rows: dict[int, dict[str, Any]] = {}
        self.running: list[int] = []  # request ids, in step order
        self.limit: dict[int, int] = {}
        self.tokens: dict[int, list[int]] = {}
        self.logits: dict[int, list[torch.Tensor]] = {}

    def admit(self, rids: list[int], prompts: list[list[int]], names: list, limits: list[int]) -> None:
        for rid, prompt, name, limit in zip(rids, prompts, names, limits):
            if self.decoder is None:
                stream, enc = [VIRTUAL] * self.model.stream_prefix_length(name) + list(prompt), None
            else:
                stream, enc = list(self.decoder), tuple(prompt)
            self.rows[rid] = {"adapter": name, "stream": stream, "done": 0, "blocks": [], "enc": enc}
            self.limit[rid], self.tokens[rid], self.logits[rid] = limit, [], []
            self.running.append(rid)

    def step(self) -> None:
        """One paged step of every running row; a row's stream advances only if the step succeeds."""
        chunks = []
        for rid in self.running:
            row = self.rows[rid]
            end = len(row["stream"])
            while len(row["blocks"]) * self.BLOCK < end:
                row["blocks"].append(self.free.pop())
            tokens = row["stream"][row["done"] :]
            chunks.append(
                SeqChunk(
                    rid, row["adapter"], tokens, row["done"], list(row["blocks"]), encoder_ids=row["enc"]
                )
            )
        logits = self.model.paged_step(StepPlan(chunks))
        assert logits.shape[0] == len(self.running)
        for rid, row_logits in zip(self.running, logits):
            row = self.rows[rid]
            row["done"] = len(row["stream"])
            token = int(row_logits.argmax())
            row["stream"].append(token)
            self.tokens[rid].append(token)
            self.logits[rid].append(row_logits.clone())
        self.retire()

    def leave(self, rid: int) -> None:
        self.free += self.rows.pop(rid)["blocks"]
        self.model.paged_release(rid)
        self.running.remove(rid)

    def retire(self) -> None:
        """Finished rows (EOS or their token limit) leave at once."""
        for rid in list(self.running):
            tokens = self.tokens[rid]
            if tokens and (len(tokens) >= self.limit[rid] or tokens[-1] == self.eos):
                self.leave(rid)
