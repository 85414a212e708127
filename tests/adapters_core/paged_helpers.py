"""Helpers of the paged-step tests: per family, PEFT oracles of every method and one MultiAdapterModel serving
them (as the arch matrix builds them), and two small engines that drive `paged_step` the way a scheduler would:
`MiniEngine` (prompts prefilled in uneven chunks, rows joining while others decode; causal and
encoder-decoder rows) and `GreedyEngine` (rows of causal and encoder-decoder bases join, decode greedily and
leave, their blocks going back); both hand blocks out from a shuffled free list so that no row's blocks are
contiguous. `StepChecker` and `run_joining_rows` are the parity tests' per-step check and their loop."""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import peft
import torch
from arch_configs import Family
from arch_matrix import method_configs, perturb

from adapters_core.multi import MultiAdapterModel
from adapters_core.paged import VIRTUAL, SeqChunk, StepPlan
from adapters_core.paged.model_api import _state


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
    """Drives paged_step: a causal row streams `[v virtual][prompt][generated]`, an encoder-decoder row its
    decoder's `[start][forced …][generated]` (`prompt`, beside its encoder input); each step takes one chunk of
    every row that still prefills (sizes from `chunk_sizes`, cycled) and one token of every decoding row."""

    def __init__(
        self, model: Any, num_blocks: int, block_size: int, chunk_sizes: list[int], seed: int = 0
    ) -> None:
        self.model, self.block_size = model, block_size
        model.init_kv_cache(num_blocks, block_size)
        self.free = list(range(model.reserved_blocks, num_blocks))
        random.Random(seed).shuffle(self.free)
        self.chunk_sizes, self.turn = chunk_sizes, 0
        self.rows: dict[int, dict[str, Any]] = {}

    def join(
        self, seq_id: int, adapter: str | None, prompt: list[int], encoder_ids: Sequence[int] | None = None
    ) -> None:
        v = self.model.stream_prefix_length(adapter)
        assert encoder_ids is None or v == 0  # an encoder-decoder's virtual tokens open its encoder input
        self.rows[seq_id] = {
            "adapter": adapter,
            "stream": [VIRTUAL] * v + list(prompt),
            "enc": None if encoder_ids is None else tuple(encoder_ids),
            "done": 0,
            "blocks": [],
        }

    def leave(self, seq_id: int) -> None:
        """The row finishes: its blocks go back to the free list, its encoder keys/values (if any) are freed."""
        self.free += self.rows.pop(seq_id)["blocks"]
        self.model.paged_release(seq_id)

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
            last = end == len(stream)
            chunks.append(
                SeqChunk(
                    seq_id, row["adapter"], tokens, done, list(row["blocks"]), last, encoder_ids=row["enc"]
                )
            )
            row["done"] = end
        plan = StepPlan(chunks)
        logits = self.model.paged_step(plan)
        wanted = [c for c in chunks if c.want_logits]
        assert logits.shape[0] == len(wanted)
        for chunk, row_logits in zip(wanted, logits):
            self.rows[chunk.seq_id]["stream"].append(on_logits(chunk.seq_id, row_logits))
        return plan


class StepChecker:
    """The per-step check of the paged parity tests, as `MiniEngine.step`'s `on_logits`: every logits row a step
    returns equals the oracle's for that row alone (whole (V,) tensors within `tol`, rtol 0) and its greedy
    token is the oracle's; it returns that token. `want(r, generated)` is the oracle's (V,) logits of row `r`
    after the tokens it generated so far; `names[r]` (the row's adapter) labels failures."""

    def __init__(
        self, names: Sequence[str | None], want: Callable[[int, list[int]], torch.Tensor], tol: float
    ) -> None:
        self.names, self.want, self.tol = names, want, tol
        self.got: dict[int, list[int]] = {r: [] for r in range(len(names))}
        self.checked = 0

    def __call__(self, r: int, logits: torch.Tensor) -> int:
        want = self.want(r, self.got[r])
        label = f"row {r} ({self.names[r]})"
        torch.testing.assert_close(logits, want, atol=self.tol, rtol=0, msg=lambda m: f"{label}: {m}")
        token = int(logits.argmax())
        assert token == int(want.argmax()), label
        self.got[r].append(token)
        self.checked += 1
        return token


def run_joining_rows(
    engine: MiniEngine, check: StepChecker, new: int, join: Callable[[int], None], per_step: int = 3
) -> None:
    """Steps `engine` until every row generated `new` tokens, each checked by `check`: rows join `per_step` at a
    time while earlier ones decode (`join(r)`), finished rows leave; then every token was checked."""
    step = 0
    while any(len(t) < new for t in check.got.values()):
        for r in range(len(check.names)):
            if r // per_step == step and r not in engine.rows:
                join(r)
        for r in [r for r, t in check.got.items() if len(t) >= new and r in engine.rows]:
            engine.leave(r)
        engine.step(check)
        step += 1
    assert check.checked == len(check.names) * new


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


def snapshot_pool(model: Any) -> list[torch.Tensor]:
    """Copies of every layer's key and value pool of `model`'s paged cache (to replay a step from one state)."""
    pool = _state(model).pool
    return [t.clone() for t in (*pool.keys, *pool.values)]


def restore_pool(model: Any, saved: list[torch.Tensor]) -> None:
    """Write a `snapshot_pool` back into `model`'s pool in place."""
    pool = _state(model).pool
    for t, s in zip((*pool.keys, *pool.values), saved):
        t.copy_(s)
