"""One paged step: a `StepPlan` (plan.py) run as ONE forward of the packed stream (1, T) over the paged pool.

The model runs exactly as transformers wrote it, with three things swapped in for the step: the attention
implementation ("swapyard_paged", attention.py), the cache (`StepCache`: writes keys/values into their blocks in
place) and the adapter context (`TokenContext`: every multi-adapter layer applies per-token slots by segments).
Position ids are what each row alone would number its tokens; virtual (prompt-tuning / P-tuning) positions get
the adapter's virtual embeddings; only the tokens whose logits are wanted go through the LM head.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from . import attention, families
from .batch import PagedBatch, build
from .kv_cache import KVPool, StepCache
from .plan import StepPlan


class PagedState:
    """What a MultiAdapterModel keeps for the paged path: the pool and the cell its attention modules read."""

    def __init__(self) -> None:
        self.pool: KVPool | None = None
        self.cell: list[StepCache | None] = [None]  # shared by every marked attention module
        self.support: str | bool | None = False  # False: not probed yet
        self.logits_to_keep: bool | None = None  # whether the model's forward takes it (looked up once)
        # The attention modules families.py runs (looked up once).
        self.adapted: list[torch.nn.Module] | None = None


def mark_attention_modules(model: torch.nn.Module, cell: list[Any]) -> None:
    """Give every attention module the cell the paged attention finds the running step's cache in."""
    for module in model.modules():
        if "Attention" in type(module).__name__ or hasattr(module, "layer_idx"):
            setattr(module, attention.MARK, cell)


@contextmanager
def paged_attention_on(config: Any) -> Iterator[None]:
    """The model's attention implementation is "swapyard_paged" for the duration (restored after)."""
    attention.register()
    before = config._attn_implementation
    config._attn_implementation = attention.NAME
    try:
        yield
    finally:
        config._attn_implementation = before


def _inputs(store: Any, batch: PagedBatch) -> dict[str, torch.Tensor]:
    """input_ids (1, T), or inputs_embeds (1, T, d) with virtual embeddings when some chunk has virtual positions."""
    if not batch.virtual:
        return {"input_ids": batch.input_ids}
    embeds = store.embed(
        batch.input_ids
    )  # (1, T, d): the multi-adapter embedding (per-token LoRA) under the ctx
    for at, slot, first, count in batch.virtual:
        table = store.slots[slot].virtual  # (v, d)
        embeds[0, at : at + count] = table[first : first + count].to(embeds.dtype)
    return {"inputs_embeds": embeds}


def run(
    model: Any,
    state: PagedState,
    plan: StepPlan,
    chunk_info: list[tuple[int, int, int]],
    probe: list[StepCache] | None = None,
) -> torch.Tensor:
    """(n, V) float logits of the chunks with `want_logits`, plan order. `chunk_info[i]` = (slot, v, m).
    `probe` receives the step's cache (paged_support counts the layers it wrote and attended)."""
    pool = state.pool
    assert pool is not None
    store = model._prompts
    base = store.model
    device = store.embed.weight.device
    batch = build(
        plan,
        pool,
        [s for s, _, _ in chunk_info],
        [v for _, v, _ in chunk_info],
        [m for _, _, m in chunk_info],
        int(store.embed.weight.shape[0]),
        device,
    )
    batch.extras["prefix"] = {s: store.slots[s].prefix for s, _, m in chunk_info if m}
    cache = StepCache(pool, batch)
    if probe is not None:
        probe.append(cache)
    keep = batch.logit_tokens or [batch.num_tokens - 1]
    call: dict[str, Any] = {"position_ids": batch.position_ids, "cache": cache, "use_cache": True}
    if state.logits_to_keep is None:
        state.logits_to_keep = "logits_to_keep" in inspect.signature(base.forward).parameters
    if state.logits_to_keep:
        call["logits_to_keep"] = torch.tensor(keep, dtype=torch.long, device=device)
    if state.adapted is None:
        state.adapted = families.adapted_modules(base)
    state.cell[0] = cache
    try:
        with paged_attention_on(base.config), families.adapted(state.adapted), model.rows(batch.context):
            out = base(**_inputs(store, batch), **call)
    finally:
        state.cell[0] = None
    logits = out.logits[0]  # (K, V), or (T, V) without logits_to_keep
    if "logits_to_keep" not in call:
        logits = logits[keep]
    if not batch.logit_tokens:
        return logits[:0].float()
    return logits.float()
