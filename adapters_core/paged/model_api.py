"""The MultiAdapterModel methods of the paged contract (paged/plan.py), as functions of the model.

`support` decides which bases run on the paged path: causal LMs whose attention calls `cache.update` and then
transformers' attention interface (checked by a probe step over a private two-block pool), or whose attention
families.py adapts (BLOOM, Falcon: ALiBi or rotary), and encoder-decoders (T5, mT5, BART: paged/seq2seq.py, its
own probe). Other ALiBi families (MPT, Baichuan) are refused: their biases come from the attention mask, which the
paged path does not build.
"""

from __future__ import annotations

from typing import Any

import torch

from kernels import paged_attention as paged_kernel

from ..errors import UnsupportedError
from . import families, seq2seq
from .kv_cache import RESERVED_BLOCKS, KVPool, StepCache
from .plan import SeqChunk, StepPlan
from .step import PagedState, mark_attention_modules, run

__all__ = ["RESERVED_BLOCKS"]

_ALIBI = ("mpt", "baichuan")


def _state(model: Any) -> PagedState:
    state = model.__dict__.get("_paged_state")
    if state is None:
        state = PagedState()
        model.__dict__["_paged_state"] = state
    return state


def _heads(model: Any) -> list[tuple[int, int]]:
    if model._prompts.kind == "seq2seq":  # the decoder's self-attention layers (paged/seq2seq.py)
        return seq2seq.heads(model)
    return list(model._prompts.cache_heads or [])


def _dtype(model: Any) -> torch.dtype:
    return getattr(model.model, "dtype", model._prompts.embed.weight.dtype)


def support(model: Any) -> str | None:
    state = _state(model)
    if state.support is False:
        if (
            model._holder.current is not None
        ):  # the probe runs a step: never cache a "no" that only means "busy"
            raise RuntimeError("paged_support() was called during a forward; call it between steps.")
        state.support = _why_not(model, state)
    return state.support  # type: ignore[return-value]


def _why_not(model: Any, state: PagedState) -> str | None:
    base = model.model
    name = type(base).__name__
    kind = model._prompts.kind
    if kind == "seq2seq":
        return seq2seq.why_not(model)
    if kind != "causal":
        return f"{name} is a sequence classifier (encoder): the paged path serves generating LMs."
    cfg = base.config
    adapted = families.adapted_modules(base)
    if (cfg.model_type in _ALIBI or getattr(cfg, "alibi", False)) and not adapted:
        return (
            f"{name} uses ALiBi position biases, which the paged attention applies for BLOOM and Falcon only."
        )
    if not _heads(model):
        return f"{name} fills no KV cache layers: nothing to page."
    # Probe: one two-token step over a private pool; every layer must write its keys and attend through us.
    probe = PagedState()
    probe.pool = KVPool(_heads(model), RESERVED_BLOCKS + 1, 2, dtype=_dtype(model), device=model._device())
    mark_attention_modules(base, probe.cell)
    layers = len(_heads(model))
    seen: list[StepCache] = []
    failure = ""
    try:
        plan = StepPlan([SeqChunk(0, None, [1, 1], 0, [RESERVED_BLOCKS])])
        run(model, probe, plan, [(-1, 0, 0)], probe=seen)
    except Exception as exc:  # the reason is the answer
        failure = f" (the probe step failed: {type(exc).__name__}: {exc})"
    finally:
        mark_attention_modules(base, state.cell)
    writes, attended = (seen[0].writes, seen[0].attended) if seen else (0, 0)
    if failure or writes != layers or attended != layers:
        return (
            f"{name}: its attention does not run through transformers' cache.update and attention interface in "
            f"every layer ({writes} of {layers} layers wrote keys, {attended} attended){failure}; the paged path "
            "needs both."
        )
    return None


def stream_prefix_length(model: Any, adapter: str | None) -> int:
    if adapter is None or model._prompts.kind == "seq2seq":  # T5's virtual tokens open the encoder input
        return 0
    tensors = model._prompts.slots.get(model._get(adapter).slot)
    return int(tensors.length) if tensors is not None and tensors.kind == "virtual" else 0


def kv_block_bytes(model: Any, block_size: int) -> int:
    return KVPool.block_bytes(_heads(model), block_size, _dtype(model))


def init_kv_cache(model: Any, num_blocks: int, block_size: int) -> None:
    reason = support(model)
    if reason is not None:
        raise UnsupportedError(reason)
    state = _state(model)
    state.pool = None  # free the old pool before the new one is allocated
    state.pool = KVPool(_heads(model), num_blocks, block_size, dtype=_dtype(model), device=model._device())
    mark_attention_modules(model.model, state.cell)
    warm_up_attention(model, state.pool)


def warm_up_attention(model: Any, pool: KVPool) -> int:
    """Compile the Triton decode attention's variants for this pool's layers now (kernels/paged_attention.py;
    CUDA with compiled Triton only), so that no step compiles one. Returns how many were launched."""
    device = pool.keys[0].device
    if device.type != "cuda" or model._prompts.kind != "causal":
        return 0
    if paged_kernel.attention_backend(device) != "triton":
        return 0
    from kernels import triton_lora
    from kernels.warmup import warmup_attention

    cfg = model.model.config.get_text_config()
    q_heads = getattr(cfg, "num_attention_heads", None)
    if triton_lora.INTERPRETED or not q_heads:
        return 0
    windows = {False, bool(getattr(cfg, "sliding_window", None))}  # Gemma 2-style models alternate
    softcap = bool(getattr(cfg, "attn_logit_softcapping", None))
    dtype = pool.keys[0].dtype
    variants = {
        paged_kernel.attention_variant(int(q_heads), hkv, hd, dtype, pool.block_size, window, softcap)
        for hkv, hd in pool.heads
        for window in windows
    }
    return len(warmup_attention(variants, device=device))


def _chunk_info(model: Any, chunk: SeqChunk) -> tuple[int, int, int]:
    """(slot, virtual positions v, prefix length m) of the chunk's adapter."""
    if chunk.adapter is None:
        return -1, 0, 0
    slot = model._get(chunk.adapter).slot
    tensors = model._prompts.slots.get(slot)
    if tensors is None:
        return slot, 0, 0
    if tensors.kind == "virtual":
        return slot, int(tensors.length), 0
    if tensors.kind == "prefix":
        return slot, 0, int(tensors.prefix[0][0].shape[1])
    return slot, 0, 0  # LLaMA-Adapter: its hooks add the gated prompt term per token (multi/prompts.py)


def copy_kv_block(model: Any, src: int, dst: int) -> None:
    pool = _state(model).pool
    if pool is None:
        raise RuntimeError("copy_kv_block before init_kv_cache: allocate the KV pool first.")
    pool.copy_block(src, dst)


def paged_step(model: Any, plan: StepPlan) -> torch.Tensor:
    state = _state(model)
    if state.pool is None:
        raise RuntimeError("paged_step before init_kv_cache: allocate the KV pool first.")
    if model._prompts.kind == "seq2seq":
        return seq2seq.run(model, state, seq2seq.store(model), plan)
    return run(model, state, plan, [_chunk_info(model, c) for c in plan.chunks])


def paged_decoder_prompt(model: Any) -> list[int] | None:
    return seq2seq.decoder_prompt(model) if model._prompts.kind == "seq2seq" else None


def paged_encoder_bytes(model: Any, adapter: str | None, input_length: int) -> int:
    if model._prompts.kind != "seq2seq":
        return 0
    return seq2seq.row_encoder_bytes(model, adapter, input_length)


def paged_release(model: Any, seq_id: int) -> None:
    seq2seq.release(model, seq_id)
