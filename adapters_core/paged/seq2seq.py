"""Encoder-decoder rows (T5, mT5, BART) on the paged path.

A row's stream is its decoder stream, `[decoder_start_token_id][generated …]` (no virtual positions: prompt
tuning's virtual tokens open the *encoder* input, as in PEFT). Its chunks carry `encoder_ids` (plan.py).

Admission: when a chunk's row has no encoder keys/values yet (or its chunk starts at 0, a new or recomputed row),
the encoder runs once for it under its adapter — the rows needing it in one right-padded forward laid out as the
multi path lays out any batch (multi/prompt_layout.py: prompt tuning / P-tuning virtual tokens first, LoRA, IA3 …
as PEFT computes them) — and each decoder layer's cross-attention keys/values are kept per row: (H, Le, hd) each,
Le the row's encoder length, cut from the cross-attention cache one decoder token fills (transformers' own
projections, under the row's adapter).

Where they live: a per-row store keyed by seq_id (`EncoderStore`), not the block pool. They are read-only, exact
in length (no block rounding) and live exactly as long as the row: `paged_release(seq_id)` drops them when the row
finishes, fails or is preempted (a preempted row is re-encoded when it comes back). Not in the pool because the
pool's blocks are sized and hashed for the decoder stream (prefix caching keys blocks by tokens, which an encoder
output is not), and a row's cross keys never grow. Their bytes are `encoder_kv_bytes(length)` per row; the engine
charges them to the pool all the same (`paged_encoder_bytes`: the row holds that many bytes of blocks, never
written, while it runs), so admission and preemption count them.

Each step: the decoder tokens of all chunks packed as one (1, T) stream through the model's own forward, with the
"swapyard_paged_s2s" attention (seq2seq_attention.py: paged self-attention with the row's own positions and T5
bias, cross-attention to the row's own encoder keys/values), BART's learned positions replaced by each token's
own (a forward hook), and only the tokens whose logits are wanted reaching the LM head.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from ..multi.prompt_layout import plan_batch
from ..multi.prompts import _cache_length_positions
from ..multi.steps import decoder_start, pad_rows
from . import seq2seq_attention as s2s_attention
from .batch import build
from .encoder_store import EncodedRow, EncoderStore
from .kv_cache import RESERVED_BLOCKS, KVPool, StepCache
from .plan import SeqChunk, StepPlan
from .step import PagedState, mark_attention_modules


def store(model: Any) -> EncoderStore:
    found = model.__dict__.get("_paged_encoder_store")
    if found is None:
        found = EncoderStore()
        model.__dict__["_paged_encoder_store"] = found
    return found


@torch.no_grad()
def heads(model: Any) -> list[tuple[int, int]]:
    """(key/value heads, head width) of each decoder self-attention layer: from a one-token forward's cache."""
    kept = store(model)
    if kept.heads is None:
        base, device = model.model, model._device()
        out = base(
            input_ids=torch.ones(1, 1, dtype=torch.long, device=device),
            decoder_input_ids=torch.full((1, 1), decoder_start(base), dtype=torch.long, device=device),
            use_cache=True,
        )
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        own = getattr(cache, "self_attention_cache", None)
        layers = getattr(own, "layers", None) or []
        kept.heads = [(int(layer.keys.shape[1]), int(layer.keys.shape[-1])) for layer in layers]
    return kept.heads


def encoder_kv_bytes(model: Any, length: int) -> int:
    """Bytes of one row's cross-attention keys and values for an encoder input of `length` positions."""
    width = torch.finfo(_dtype(model)).bits // 8
    return 2 * length * width * sum(h * d for h, d in heads(model))


def row_encoder_bytes(model: Any, adapter: str | None, input_length: int) -> int:
    """`encoder_kv_bytes` of a row of `input_length` prompt tokens under `adapter`: its encoder input is the
    adapter's virtual tokens (prompt tuning), then the prompt."""
    virtual = 0
    if adapter is not None:
        tensors = model._prompts.slots.get(model._get(adapter).slot)
        if tensors is not None and tensors.kind == "virtual":
            virtual = int(tensors.length)
    return encoder_kv_bytes(model, virtual + input_length)


def _dtype(model: Any) -> torch.dtype:
    return getattr(model.model, "dtype", model._prompts.embed.weight.dtype)


def decoder_prompt(model: Any) -> list[int]:
    """The decoder stream every row starts with."""
    return [decoder_start(model.model)]


def release(model: Any, seq_id: int) -> None:
    """Drop the row's encoder keys/values (it finished, failed or was preempted); idempotent."""
    store(model).release(seq_id)


def _key(model: Any, chunk: SeqChunk) -> tuple[str | None, int, tuple[int, ...]]:
    slot = -1 if chunk.adapter is None else model._get(chunk.adapter).slot
    return chunk.adapter, slot, tuple(chunk.encoder_ids or ())


@torch.no_grad()
def encode(model: Any, kept: EncoderStore, chunks: list[SeqChunk]) -> None:
    """Encode the rows of `chunks` that need it (module docstring), in one padded forward."""
    todo: list[SeqChunk] = []
    vocab = int(model._prompts.embed.weight.shape[0])
    for chunk in chunks:
        row = kept.rows.get(chunk.seq_id)
        if chunk.encoder_ids is None:
            if row is None:
                raise ValueError(
                    f"seq {chunk.seq_id} (adapter {chunk.adapter!r}): an encoder-decoder row's chunk needs its "
                    "encoder input (SeqChunk.encoder_ids: the prompt's token ids)."
                )
            continue
        if not chunk.encoder_ids:
            raise ValueError(
                f"seq {chunk.seq_id}: encoder_ids is empty; the encoder needs at least one token."
            )
        bad = [t for t in chunk.encoder_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(
                f"seq {chunk.seq_id}: encoder token ids {bad[:4]} are outside the vocabulary (0..{vocab - 1})."
            )
        if row is None or chunk.start == 0 or row.key != _key(model, chunk):
            todo.append(chunk)
    if not todo:
        return
    slots = model.row_slots([c.adapter for c in todo], len(todo))
    ids, mask = pad_rows([list(c.encoder_ids or ()) for c in todo], left=False, device=model._device())
    prompts, base = model._prompts, model.model
    with model.rows(slots) as ctx:
        layout = plan_batch(prompts, slots, input_ids=ids, attention_mask=mask)  # virtual tokens first
        first = (
            {"input_ids": ids} if layout.inputs_embeds is None else {"inputs_embeds": layout.inputs_embeds}
        )
        ctx.prompt = layout
        encoder = base.get_encoder()(**first, attention_mask=layout.attention_mask, return_dict=True)
        # One decoder token fills the cross-attention cache with transformers' own keys/values of the encoder
        # output (the rows' adapters applied by their projections); its self-attention side is dropped.
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        start = torch.full((len(todo), 1), decoder_start(base), dtype=torch.long, device=ids.device)
        base(
            encoder_outputs=encoder,
            attention_mask=layout.attention_mask,
            decoder_input_ids=start,
            cache=cache,
            use_cache=True,
        )
    layers = cache.cross_attention_cache.layers
    lengths = layout.attention_mask.sum(dim=1).tolist()  # [virtual v][prompt][pads]: the first Le columns
    for r, chunk in enumerate(todo):
        n = int(lengths[r])
        kv = [(layer.keys[r, :, :n].contiguous(), layer.values[r, :, :n].contiguous()) for layer in layers]
        kept.put(chunk.seq_id, EncodedRow(_key(model, chunk), kv))


@dataclass
class _CrossLayer:
    keys: torch.Tensor
    values: torch.Tensor


@dataclass
class _CrossCache:
    layers: list[_CrossLayer]


class _StepEncDecCache(EncoderDecoderCache):
    """The decoder's `cache` for one step: self-attention writes into the pool (`StepCache`); every cross-attention
    layer is marked filled and hands over the placeholder keys, so the attention finds each row's own. (No
    super().__init__: it insists on two `Cache` objects.)"""

    def __init__(self, own: StepCache, dummy: torch.Tensor, layers: int) -> None:
        self.self_attention_cache: Any = own
        self.cross_attention_cache: Any = _CrossCache([_CrossLayer(dummy, dummy)] * layers)
        self.is_updated = dict.fromkeys(range(layers), True)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


def _t5_bias_module(decoder: torch.nn.Module) -> Any:
    for module in decoder.modules():
        if getattr(module, "has_relative_attention_bias", False) and hasattr(
            module, "relative_attention_bias"
        ):
            return module
    return None


def _position_modules(kept: EncoderStore, decoder: torch.nn.Module) -> tuple[Any, list[Any]]:
    """T5's layer-0 bias attention (or None) and BART-style learned position modules of the decoder, found once."""
    if kept.positions is None:
        kept.positions = (_t5_bias_module(decoder), [m for _, m in _cache_length_positions(decoder)])
    return kept.positions


@contextmanager
def _step_hooks(base: Any, kept: EncoderStore, keep: torch.Tensor, positions: torch.Tensor) -> Iterator[None]:
    """For one step: the s2s attention on every decoder config, T5's layer-0 bias replaced by a placeholder (the
    attention computes each row's own), BART's positions each token's own, the LM head on the `keep` tokens."""
    decoder = base.get_decoder()
    if kept.configs is None:  # T5's encoder and decoder stacks each hold a copy of the config
        found = [base.config, *(getattr(m, "config", None) for m in decoder.modules())]
        kept.configs = list({id(c): c for c in found if c is not None}.values())
    placeholder = torch.zeros(1, 1, 1, 1, device=positions.device)

    def bias_hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if kwargs.get("position_bias") is None:
            kwargs["position_bias"] = placeholder
        return args, kwargs

    def positions_hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        # Before the module runs: numbering the packed step itself (0 .. T - 1) would index past its table once
        # a step packs more decoder tokens than the base has positions, though every row's own fit.
        if len(args) > 2:
            args = (*args[:2], positions[0], *args[3:])
        else:
            kwargs["position_ids"] = positions[0]
        return args, kwargs

    def head_hook(module: Any, args: tuple) -> tuple:
        return (args[0][:, keep], *args[1:])

    s2s_attention.register()
    with ExitStack() as stack:
        for c in kept.configs:
            stack.callback(setattr, c, "_attn_implementation", c._attn_implementation)
            c._attn_implementation = s2s_attention.NAME
        hooks = [base.get_output_embeddings().register_forward_pre_hook(head_hook)]
        t5, learned = _position_modules(kept, decoder)
        if t5 is not None:
            hooks.append(t5.register_forward_pre_hook(bias_hook, with_kwargs=True))
        for module in learned:
            hooks.append(module.register_forward_pre_hook(positions_hook, with_kwargs=True))
        for hook in hooks:
            stack.callback(hook.remove)
        yield


def _chunk_info(model: Any, chunk: SeqChunk) -> tuple[int, int]:
    """(slot, prefix length m): the decoder side of an encoder-decoder row has no virtual positions."""
    if chunk.adapter is None:
        return -1, 0
    slot = model._get(chunk.adapter).slot
    tensors = model._prompts.slots.get(slot)
    if tensors is not None and tensors.kind == "prefix":
        return slot, int(tensors.prefix[0][0].shape[1])
    return slot, 0


def run(
    model: Any, state: PagedState, kept: EncoderStore, plan: StepPlan, probe: list[StepCache] | None = None
) -> torch.Tensor:
    """(n, V) float logits (plan.py's layout) of one step of encoder-decoder rows."""
    pool = state.pool
    assert pool is not None
    prompts = model._prompts
    base = prompts.model
    device = prompts.embed.weight.device
    chunks = plan.chunks
    if not chunks:
        raise ValueError("paged_step needs at least one chunk.")
    encode(model, kept, chunks)
    info = [_chunk_info(model, c) for c in chunks]
    slots, prefix = [s for s, _ in info], [m for _, m in info]
    vocab = int(prompts.embed.weight.shape[0])
    batch = build(plan, pool, slots, [0] * len(chunks), prefix, vocab, device)
    batch.extras["prefix"] = {s: prompts.slots[s].prefix for s, m in info if m}
    decode = tuple(c.seq_id for c in chunks if len(c.tokens) == 1)
    dummy = torch.zeros(1, 1, 1, 1, dtype=_dtype(model), device=device)
    bias = _position_modules(kept, base.get_decoder())[0]
    batch.extras["s2s"] = s2s_attention.Cross(
        dummy,
        decode=kept.decode_slab(decode) if decode else None,
        prefill=[kept.rows[c.seq_id].kv for c in chunks if len(c.tokens) > 1],
        bias=s2s_attention.T5Bias(bias) if bias is not None else None,
    )
    cache = StepCache(pool, batch)
    if probe is not None:
        probe.append(cache)
    keep = batch.logit_tokens or [batch.num_tokens - 1]
    encoder = BaseModelOutput(
        last_hidden_state=torch.zeros(1, 1, base.config.d_model, dtype=_dtype(model), device=device)
    )
    state.cell[0] = cache
    try:
        with (
            _step_hooks(base, kept, torch.tensor(keep, dtype=torch.long, device=device), batch.position_ids),
            model.rows(batch.context),
        ):
            out = base(
                encoder_outputs=encoder,
                decoder_input_ids=batch.input_ids,
                cache=_StepEncDecCache(cache, dummy, len(pool.keys)),
                use_cache=True,
            )
    finally:
        state.cell[0] = None
    logits = out.logits[0]  # (K, V)
    if not batch.logit_tokens:
        return logits[:0].float()
    return logits.float()


def why_not(model: Any) -> str | None:
    """None when this encoder-decoder runs on the paged path: its decoder numbers tokens in a way this module
    reproduces per row (T5's relative bias, BART-style learned positions from the cache length), and a probe step
    writes every self-attention layer and attends every cross-attention layer through us."""
    base = model.model
    name = type(base).__name__
    decoder = base.get_decoder()
    if _t5_bias_module(decoder) is None and not _cache_length_positions(decoder):
        return (
            f"{name}: the paged path reproduces an encoder-decoder's decoder positions for T5-style relative "
            "biases and BART-style learned positions only; this decoder numbers its tokens another way."
        )
    layers = len(heads(model))
    if not layers:
        return f"{name} fills no decoder KV cache layers: nothing to page."
    probe = PagedState()
    probe.pool = KVPool(heads(model), RESERVED_BLOCKS + 1, 2, dtype=_dtype(model), device=model._device())
    mark_attention_modules(base, probe.cell)
    seen: list[StepCache] = []
    failure = ""
    try:
        chunk = SeqChunk(0, None, [decoder_start(base)], 0, [RESERVED_BLOCKS], encoder_ids=(1, 1))
        run(model, probe, EncoderStore(), StepPlan([chunk]), probe=seen)
    except Exception as exc:  # the reason is the answer
        failure = f" (the probe step failed: {type(exc).__name__}: {exc})"
    finally:
        state_cell = model.__dict__.get("_paged_state")
        if state_cell is not None:
            mark_attention_modules(base, state_cell.cell)
    writes, attended = (seen[0].writes, seen[0].attended) if seen else (0, 0)
    crossed = seen[0].batch.extras["s2s"].attended if seen else 0
    if failure or writes != layers or attended != layers or crossed != layers:
        return (
            f"{name}: its decoder attention does not run through transformers' cache and attention interface in "
            f"every layer ({writes} of {layers} layers wrote keys, {attended} attended, {crossed} cross-attended)"
            f"{failure}; the paged path needs all three."
        )
    return None
