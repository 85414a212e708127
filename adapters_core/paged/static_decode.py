"""A decode-only paged step over static buffers: fixed shapes, no host branch, ready for CUDA-graph capture.

For a bucket of B rows and a width of nb blocks, the step reads four device buffers and nothing else:

    input_ids     (B,)      the token each row appends (padding rows: 0)
    lengths       (B,)      stream positions cached incl. this token (padding rows: 1)
    token_slots   (B,)      the row's adapter slot, -1 = base (padding rows: -1)
    block_tables  (B, nb)   the row's blocks, padded with the scratch block 0 (padding rows: all 0)

Everything else is derived on the device inside the step: position p = length - 1, the write slot
`block_tables[b, p // bs] · bs + p % bs` (padding rows write offset 0 of the scratch block 0, which real rows
only ever read under a mask), the block to zero when p starts it, the key masks (key column c is seen when
c < length, and within a sliding window of p), and the per-token adapter metadata
(`kernels.metadata.build_static_decode_meta`: the BGMV path, `kernels.static_bgmv` on the CPU). Attention gathers the
nb blocks of every row tile by tile (`attention.KEY_TILE` keys a tile, online softmax: online.py), the same
math as the eager paged attention (attention.py), so logits match `paged_step`'s.

Which rows may run here (`chunk_row`, `slot_reason`), and why the others make the engine use the eager `paged_step` for the
whole step: only a decode token (a one-token chunk of a real token) whose adapter touches the model through
per-token pools alone: LoRA / DoRA / AdaLoRA, IA3, and prompt / P-tuning (whose virtual positions are all in
the prefill). Prefix tuning (read-only prefix keys per adapter: host-side lists of rows), LLaMA-Adapter
(a gated attention term per slot group), `modules_to_save` copies, trained biases and embedding LoRA (each
applied per group of rows found on the host) are not static, nor are ALiBi bases.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface

from kernels import BatchMeta
from kernels import paged_attention as paged_kernel
from kernels.metadata import build_static_decode_meta

from ..multi.context import TokenContext
from ..multi.layers import MultiEmbedding, MultiLinear
from . import attention, families
from .kv_cache import KVPool
from .online import Online, one_tile
from .plan import VIRTUAL, SeqChunk

NAME = "swapyard_static_decode"
_ALIBI = ("bloom", "mpt", "baichuan")


@dataclass
class StaticInputs:
    """Views of the static buffers for one (B, nb) shape (see the module docstring)."""

    input_ids: torch.Tensor  # (B,)
    lengths: torch.Tensor  # (B,)
    token_slots: torch.Tensor  # (B,)
    block_tables: torch.Tensor  # (B, nb)


class StaticBuffers:
    """One int64 device buffer holding every bucket's inputs, so that a step's inputs travel in one copy.

    For a shape (B, nb) the views are `[ids B][lengths B][slots B][tables B·nb]` from the start of the buffer:
    the same addresses at every call of that shape, which is what a captured graph reads."""

    def __init__(self, max_batch: int, max_blocks: int, device: torch.device) -> None:
        self.max_batch, self.max_blocks, self.device = max_batch, max_blocks, device
        self.packed = torch.zeros(max_batch * (3 + max_blocks), dtype=torch.long, device=device)

    def views(self, batch: int, width: int) -> StaticInputs:
        p, b = self.packed, batch
        return StaticInputs(
            p[:b], p[b : 2 * b], p[2 * b : 3 * b], p[3 * b : 3 * b + b * width].view(b, width)
        )

    def fill(self, rows: list[tuple[int, int, int, list[int]]], batch: int, width: int) -> StaticInputs:
        """Write `rows` = (token, length, slot, blocks) into the (batch, width) views, padding rows after them;
        one host-to-device copy. Returns the views."""
        pad = batch - len(rows)
        values = [r[0] for r in rows] + [0] * pad  # padding rows: token 0,
        values += [r[1] for r in rows] + [1] * pad  # one position (offset 0 of the scratch block),
        values += [r[2] for r in rows] + [-1] * pad  # no adapter,
        for _, _, _, blocks in rows:
            values += blocks + [0] * (width - len(blocks))
        values += [0] * (pad * width)  # and the scratch block only
        host = torch.tensor(values, dtype=torch.long)  # one tensor built from Python ints: no per-row ops
        if self.device.type == "cuda":
            host = host.pin_memory()
        self.packed[: host.numel()].copy_(host, non_blocking=True)
        return self.views(batch, width)


class StaticCache:
    """The `cache` of one static step: where each row writes, which blocks it starts, and the key masks, all
    computed on the device from the `StaticInputs`."""

    def __init__(self, pool: KVPool, inputs: StaticInputs) -> None:
        self.pool, self.inputs = pool, inputs
        bs = pool.block_size
        self.positions = inputs.lengths - 1  # (B,) stream position of the token (the position id too)
        block = inputs.block_tables.gather(1, (self.positions // bs)[:, None])[:, 0]  # (B,)
        self.write_slots = block * bs + self.positions % bs  # (B,)
        self.fresh = torch.where(self.positions % bs == 0, block, 0)  # (B,) blocks to zero (else scratch 0)
        self.layer: int | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write keys/values (1, Hkv, B, hd) into their slots (a started block is zeroed first, as in
        kv_cache.StepCache: what an earlier owner left there can never reach a masked column)."""
        for cache in (self.pool.keys[layer_idx], self.pool.values[layer_idx]):
            heads, _, width = cache.shape
            cache.view(heads, self.pool.num_blocks, self.pool.block_size, width).index_fill_(
                1, self.fresh, 0.0
            )
        self.pool.keys[layer_idx].index_copy_(1, self.write_slots, key_states[0])
        self.pool.values[layer_idx].index_copy_(1, self.write_slots, value_states[0])
        self.layer = layer_idx
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def hidden(self, window: int | None, first: int, width: int) -> torch.Tensor:
        """(B, width) bool: True where row b's query does not see stream column first + c (not written yet, or
        out of its window). Made per tile, not kept: the step holds no mask as wide as the context."""
        cols = first + torch.arange(width, device=self.positions.device)  # (width,)
        hide = cols > self.positions[:, None]
        if window is not None:
            hide.logical_or_(self.positions[:, None] - cols >= window)
        return hide


class StaticContext(TokenContext):
    """The adapter context of a static step: B tokens, one per row, slots read from the static buffer.

    `slot_set` is every slot whose rows may run here (not the batch's: a graph must apply a module's pools
    whatever rows it is replayed with); `index_groups` is empty because no such slot needs host-side groups."""

    def __init__(self, token_slots: torch.Tensor, slots: frozenset[int]) -> None:
        super().__init__([], layouts={})
        self.slot_set = slots
        self.static_meta = build_static_decode_meta(token_slots)

    def rows_view(self, x: torch.Tensor, where: str) -> torch.Tensor:
        tokens = x.numel() // x.shape[-1]
        if tokens != self.static_meta.num_tokens:
            raise RuntimeError(
                f"{where}: got {tokens} tokens in a static decode step of {self.static_meta.num_tokens}"
            )
        return x.reshape(1, tokens, x.shape[-1])

    def meta(self, tokens_per_row: int, device: torch.device) -> BatchMeta:
        if tokens_per_row != self.static_meta.num_tokens:  # layers ask with activations (1, T, H): T tokens
            raise RuntimeError(
                f"adapter metadata for {tokens_per_row} tokens in a static decode step of "
                f"{self.static_meta.num_tokens}"
            )
        return self.static_meta

    def index_groups(self, tokens: int, device: torch.device) -> dict[int, Any]:
        return {}


def static_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query (1, Hq, B, hd), one token per row -> (1, B, Hq, hd), each row over its gathered blocks."""
    cell = getattr(module, attention.MARK, None)
    cache = cell[0] if cell else None
    if not isinstance(cache, StaticCache) or cache.layer is None:
        raise RuntimeError(
            f"{type(module).__name__} called the static decode attention outside a static step."
        )
    window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
    window = int(window) if window else None
    softcap = kwargs.get("softcap")
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    k_pool, v_pool = cache.pool.keys[cache.layer], cache.pool.values[cache.layer]
    q = query[0].transpose(0, 1)[:, :, None]  # (B, Hq, 1, hd)
    blocks = cache.inputs.block_tables  # (B, nb)
    if paged_kernel.takes_triton(q[:, :, 0], k_pool):  # over the block tables, no gather (kernels/)
        o = paged_kernel.decode_attention(
            q[:, :, 0], k_pool, v_pool, blocks, cache.inputs.lengths, block_size=cache.pool.block_size,
            scale=scale, window=window, softcap=softcap,
        )  # fmt: skip
        return o[None], None
    o = _tiled(q, k_pool, v_pool, cache, window, scale, softcap)
    return o[None], None


def _tiled(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    cache: StaticCache,
    window: int | None,
    scale: float,
    softcap: float | None,
) -> torch.Tensor:
    """Online softmax over KEY_TILE keys at a time (online.py); the tile count depends on nb only, and every
    tile is masked on the device (no host branch). q (B, Hq, 1, hd) -> (B, Hq, hd)."""
    bs = cache.pool.block_size
    per_tile = max(1, attention.KEY_TILE // bs)
    blocks = cache.inputs.block_tables  # (B, nb)
    if blocks.shape[1] <= per_tile and softcap is None:
        return one_tile(q, k_pool, v_pool, blocks, bs, cache.hidden(window, 0, blocks.shape[1] * bs), scale)
    state = Online(q, k_pool.shape[0], scale, softcap)
    for first in range(0, blocks.shape[1], per_tile):
        tile = blocks[:, first : first + per_tile]
        hidden = cache.hidden(window, first * bs, tile.shape[1] * bs)
        state.add(k_pool, v_pool, tile, bs, hidden)
    return state.result(q.dtype)


@contextmanager
def static_attention_on(config: Any) -> Iterator[None]:
    """The model's attention implementation is the static decode attention for the duration (restored after)."""
    AttentionInterface.register(NAME, static_attention)
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before


def static_step(
    model: Any, pool: KVPool, cell: list[Any], inputs: StaticInputs, slots: frozenset[int]
) -> torch.Tensor:
    """One decode step of B rows over `inputs` (module docstring): (B, V) float logits, padding rows included.
    `cell` is the one the model's attention modules were marked with (step.mark_attention_modules);
    `slots`: the adapter slots whose rows may be in the buffers (`static_slots`)."""
    cache = StaticCache(pool, inputs)
    base = model._prompts.model
    cell[0] = cache
    try:
        with static_attention_on(base.config), model.rows(StaticContext(inputs.token_slots, slots)):
            out = base(
                input_ids=inputs.input_ids[None],
                position_ids=cache.positions[None],
                cache=cache,
                use_cache=True,
            )
    finally:
        cell[0] = None
    return out.logits[0].float()


# -- which rows may run here ---------------------------------------------------------------------------------


def model_reason(model: Any) -> str | None:
    """None when the base itself runs here (the paged path's bases, minus ALiBi ones); else why not."""
    if model._prompts.kind != "causal":  # an encoder-decoder's rows cross-attend to their own encoder output
        return f"{type(model._prompts.model).__name__} is an encoder-decoder: its decode rows run on the eager step"
    cfg = model._prompts.model.config
    if cfg.model_type in _ALIBI or getattr(cfg, "alibi", False):
        return f"{type(model._prompts.model).__name__} uses ALiBi biases, which the static decode step does not apply"
    if families.adapted_modules(model._prompts.model):
        # Falcon's rotary configs: their attention runs through a paged adapter swapped in by paged_step only.
        return f"{type(model._prompts.model).__name__}'s attention runs through a per-family adapter (families.py)"
    return None


def slot_reason(model: Any, slot: int) -> str | None:
    """None when every part of the adapter in `slot` is applied per token from pools; else why not."""
    tensors = model._prompts.slots.get(slot)
    if tensors is not None and tensors.kind != "virtual":
        what = "prefix tuning's prefix keys" if tensors.kind == "prefix" else "LLaMA-Adapter's gated prompt"
        return f"{what} are applied per group of rows"
    for path, layer in model._layers.items():
        if slot in layer.overrides:
            return f"its own copy of {path} (modules_to_save) runs per group of rows"
        if isinstance(layer, MultiLinear) and slot in layer.bias_delta:
            return f"its trained bias on {path} is added per group of rows"
        if isinstance(layer, MultiEmbedding) and slot in layer.lora:
            return f"its embedding LoRA on {path} is applied per group of rows"
    return None


@dataclass
class Eligibility:
    """Per model epoch (adapters added / removed): which slots' rows may run on the static step."""

    epoch: int
    reasons: dict[int, str | None] = field(default_factory=dict)

    def slot(self, model: Any, slot: int) -> str | None:
        if slot not in self.reasons:
            self.reasons[slot] = slot_reason(model, slot)
        return self.reasons[slot]

    def static_slots(self, model: Any) -> frozenset[int]:
        return frozenset(a.slot for a in model._adapters.values() if self.slot(model, a.slot) is None)


def chunk_row(model: Any, elig: Eligibility, chunk: SeqChunk) -> tuple[int, str | None]:
    """(slot, None) when the chunk may run on the static step, else (slot, why not)."""
    if len(chunk.tokens) != 1:
        return -1, "a prefill chunk"
    if chunk.tokens[0] == VIRTUAL:
        return -1, "a virtual (prompt-tuning) position"
    if chunk.adapter is None:
        return -1, None
    slot = model._get(chunk.adapter).slot
    return slot, elig.slot(model, slot)
