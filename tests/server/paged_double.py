"""`ReferencePagedModel`: the paged contract (adapters_core/paged/plan.py) over today's MultiAdapterModel, exact
and slow, for the engine's tests while (and beside) the real paged core.

Its "KV cache" holds token ids: `paged_step` writes each chunk's tokens into the slots its block table names,
and for a chunk that wants logits reads the row's whole stream back through the block table and runs one full
uncached forward of it (the wrapped model's forward of that row alone: virtual tokens, prefixes and every method
included).
So the answer is exactly the row's own, and any bookkeeping bug of the engine — a wrong or shared-and-
overwritten block, a position never computed, a reserved block handed out, a stale stream after preemption —
trips an assert or changes the tokens.

Everything else (adapters, add/remove, classify, embed) is the wrapped model's.
"""

from __future__ import annotations

from typing import Any

import torch

from adapters_core.paged.plan import VIRTUAL, StepPlan

UNWRITTEN = -2


class ReferencePagedModel:
    reserved_blocks = 1  # like core: block 0 is a scratch block nobody may be handed

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.slots: torch.Tensor | None = None  # (num_blocks, block_size) token ids
        self.plans: list[StepPlan] = []  # every plan run, for the tests to inspect

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def paged_support(self) -> str | None:
        kind = self.inner._prompts.kind
        return None if kind == "causal" else f"the reference paged model serves causal LMs only, not {kind}"

    def stream_prefix_length(self, adapter: str | None) -> int:
        if adapter is None:
            return 0
        prompt = self.inner.adapters[adapter].parsed.prompt
        return int(prompt.length) if prompt is not None and prompt.kind == "virtual" else 0

    def kv_block_bytes(self, block_size: int) -> int:
        config = self.inner.model.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return 2 * config.num_hidden_layers * heads * head_dim * block_size * 4

    def init_kv_cache(self, num_blocks: int, block_size: int) -> None:
        self.slots = torch.full((num_blocks, block_size), UNWRITTEN, dtype=torch.long)

    def copy_kv_block(self, src: int, dst: int) -> None:
        assert self.slots is not None, "copy_kv_block before init_kv_cache"
        self.slots[dst] = self.slots[src]

    def paged_step(self, plan: StepPlan) -> torch.Tensor:
        assert self.slots is not None, "paged_step before init_kv_cache"
        self.plans.append(plan)
        bs = self.slots.shape[1]
        assert len({c.seq_id for c in plan.chunks}) == len(plan.chunks), "a row appears twice in one plan"
        for c in plan.chunks:
            end = c.start + len(c.tokens)
            assert c.tokens and len(c.block_table) * bs >= end, (c.seq_id, len(c.block_table), end)
            assert min(c.block_table) >= self.reserved_blocks, f"reserved block handed out: {c.block_table}"
            for i, token in enumerate(c.tokens):
                p = c.start + i
                self.slots[c.block_table[p // bs], p % bs] = token
        logits = []
        for c in plan.chunks:
            if not c.want_logits:
                continue
            end = c.start + len(c.tokens)
            stream = [int(self.slots[c.block_table[p // bs], p % bs]) for p in range(end)]
            assert UNWRITTEN not in stream, f"row {c.seq_id} reads positions never computed"
            v = self.stream_prefix_length(c.adapter)
            assert stream[:v] == [VIRTUAL] * v and VIRTUAL not in stream[v:], (c.seq_id, v, stream)
            with torch.no_grad():
                out = self.inner(input_ids=torch.tensor([stream[v:]]), adapter_names=[c.adapter]).logits
            logits.append(out[0, -1].float())
        if not logits:
            return torch.empty(0, 0)
        return torch.stack(logits)
