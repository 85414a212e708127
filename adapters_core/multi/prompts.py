"""Prompt-family rows of a mixed batch: per-slot prompt state, the hooks that read it, and the batch layout.

Each row runs exactly what PEFT computes for that row alone (its own tokens, no padding), whatever the other
rows carry. With `v` the row's virtual tokens (prompt tuning / P-tuning), `m` its prefix length, `N`/`M` the
batch maxima and `L` the padded real length, the model sees `N + L` input positions and `M` prefix positions:

    causal LM (row r):  [pad N-v][virtual v][real L, with the row's own left padding]       real at N..N+L-1
    encoder / T5 enc.:  [virtual v][real L, own right padding][pad N-v]                      real at v..v+L-1
    prefix (all kinds): [pad M-m][prefix m]                     (before the input positions, in the KV cache)

Pads are masked. Positions are explicit: virtual tokens take 0..v-1 and real tokens `v + m + (rank among the
row's real tokens)`, which is what PEFT uses for the row alone (prompt: 0..v+l-1, §9.2; prefix: m.., §10.2).
Bidirectional encoders keep each row's content left-aligned because they pool index 0 (BERT pools the first
virtual token under prompt tuning, §9.2) and T5's relative bias sees index distances; a causal LM keeps every
row's real tokens at the same indices so that generation appends one column. Prefixes are left-padded so that
T5's decoder sees the same query-key distances as the row alone.

LLaMA-Adapter rows need no layout: a forward hook on each adapted attention module adds the gated prompt
attention for the rows whose slot carries it (§12). Hooks are installed once (prefix pre-hooks at construction
for BERT-style encoders, LLaMA-Adapter hooks at the first adapter that adapts a module) and are inert for rows
without such an adapter, so adapters come and go without touching the module tree.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import AdapterShapeError, UnsupportedError
from ..methods.adaption_prompt.layer import _gated_attention, _rotate_half
from ..prompt_learning.prefix_cache import self_attention_modules
from .context import ContextHolder
from .prompt_parse import PromptTensors, base_kind


def _base(module: Any) -> Any:
    """The frozen base layer under a multi-adapter wrapper (LLaMA-Adapter rows use the base projections)."""
    return getattr(module, "base_layer", module)


@dataclass
class PromptBatch:
    """The layout of one batch (module docstring). B rows, L real tokens, N virtual, M prefix positions.

    inputs_embeds: (B, N+L, d), or None when N == 0 (the caller's input_ids / inputs_embeds are used).
    attention_mask: (B, M+N+L) for causal LMs and encoders; (B, N+L) for T5's encoder.
    prefix_mask: (B, M), 1 where the row's prefix is; for T5 it prefixes the decoder mask.
    position_ids / token_type_ids: (B, N+L) or None. real_index: (B, L) index of each real token.
    next_position: (B,) the position of the next generated token (causal LMs).
    prefix: per attention layer (keys, values), each (B, H, M, hd); [] when M == 0.
    """

    n_virtual: int
    n_prefix: int
    inputs_embeds: torch.Tensor | None
    attention_mask: torch.Tensor
    prefix_mask: torch.Tensor
    position_ids: torch.Tensor | None
    token_type_ids: torch.Tensor | None
    real_index: torch.Tensor
    next_position: torch.Tensor
    prefix: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    cache: Any = None  # the prefix cache handed to BERT-style encoders by the pre-hooks


@torch.no_grad()
def _cached_heads(model: Any) -> list[tuple[int, int]]:
    """Per layer (key/value heads, head width) of the cache a one-token forward of `model` fills."""
    device = model.get_input_embeddings().weight.device
    out = model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=True)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    layers = getattr(cache, "layers", None) or []
    return [(int(layer.keys.shape[1]), int(layer.keys.shape[-1])) for layer in layers]


def _check_prefix_heads(tensors: PromptTensors, heads: list[tuple[int, int]]) -> None:
    """A prefix the model's attention cannot take (e.g. Falcon's multi-query attention caches one key/value head,
    but PEFT 0.21 sizes the prefix by num_attention_heads, so PEFT cannot run it either) is refused here."""
    have = [(int(k.shape[0]), int(k.shape[-1])) for k, _ in tensors.prefix]
    if have != heads:
        raise AdapterShapeError(
            f"the prefix has {len(have)} layers of (key/value heads, head width) {have[0] if have else None}, but "
            f"this model caches {len(heads)} layers of {heads[0] if heads else None} (multi-query or grouped-query "
            "attention that the adapter's config does not describe); no prefix of this shape can run on it — "
            "PEFT cannot run it either. Use prompt tuning, P-tuning or LoRA on this base."
        )


def _absolute_positions(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The learned absolute position embeddings of a BERT-style encoder (`embeddings.position_embeddings`)."""
    return [
        (path, module)
        for path, module in model.named_modules()
        if isinstance(module, nn.Embedding)
        and path.removesuffix(".base_layer").endswith(".position_embeddings")
    ]


def _cache_length_positions(decoder: nn.Module) -> list[tuple[str, nn.Module]]:
    """Positional embeddings that number tokens from the cache length they are given (BART's decoder)."""
    found: list[tuple[str, nn.Module]] = []
    for path, module in decoder.named_modules():
        params = inspect.signature(module.forward).parameters
        if "position_ids" in params and "cache_length" in params and isinstance(module, nn.Embedding):
            found.append((path, module))
    return found


class PromptStore:
    """Per-slot prompt tables, prefixes and LLaMA-Adapter terms of one MultiAdapterModel."""

    def __init__(self, model: Any, holder: ContextHolder) -> None:
        self.model = model  # the transformers model (typed loosely: its attributes are model-specific)
        self.kind = base_kind(model)
        self._holder = holder
        # The module real tokens are embedded with (the multi-adapter wrapper, so LoRA on embeddings applies).
        self.embed = (
            self.model.get_encoder().get_input_embeddings()
            if self.kind == "seq2seq"
            else self.model.get_input_embeddings()
        )
        self.takes_positions = "position_ids" in inspect.signature(model.forward).parameters
        self.slots: dict[int, PromptTensors] = {}
        self._adaption: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        self._hooks: dict[str, Any] = {}
        # What a decoder-only model really caches per layer, (key/value heads, head width): a prefix must match.
        self.cache_heads = _cached_heads(model) if self.kind == "causal" else None
        self.position_embeddings: list[tuple[str, nn.Module]] = []
        if self.kind == "encoder":
            # BERT-style encoders get no cache from their model class; each self-attention takes the prefix from
            # the running batch (the semantics of PEFT with transformers 4, see prompt_learning/prefix_cache.py).
            for path, module in self_attention_modules(model):
                self._hooks[path] = module.register_forward_pre_hook(
                    self._encoder_prefix_hook, with_kwargs=True
                )
            # A prefix row's tokens are numbered after its prefix (PEFT's semantics, transformers 4): the model
            # numbers them itself (BERT from 0, RoBERTa after padding_idx) and the hook adds the prefix length.
            self.position_embeddings += _absolute_positions(model)
            for path, module in self.position_embeddings:
                self._hooks[path] = module.register_forward_pre_hook(self._offset_positions_hook)
        if self.kind == "seq2seq":
            # BART-style decoders number their tokens from the cache length: rows whose cache has masked columns
            # (a shorter prefix, a later join) are numbered from their own length instead (`position_offset`).
            for path, module in _cache_length_positions(model.get_decoder()):
                self._hooks[f"decoder.{path}"] = module.register_forward_hook(
                    self._shift_positions_hook, with_kwargs=True
                )

    # -- slots ----------------------------------------------------------------------------------------
    def load(self, slot: int, tensors: PromptTensors, modules: dict[str, nn.Module]) -> None:
        """Place one adapter's tensors on the model's device (and dtype); precompute LLaMA-Adapter keys/values."""
        self.check(tensors)
        ref = self.embed.weight
        dtype = getattr(self.model, "dtype", ref.dtype)
        placed = PromptTensors(tensors.kind, tensors.length, keep_token_types=tensors.keep_token_types)
        if tensors.virtual is not None:
            placed.virtual = tensors.virtual.to(ref.device)
        placed.prefix = [(k.to(ref.device, dtype), v.to(ref.device, dtype)) for k, v in tensors.prefix]
        for path, (prompt, gate) in tensors.adaption.items():
            self._adaption.setdefault(path, {})[slot] = self._adaption_kv(modules, path, prompt, gate)
            if path not in self._hooks:
                hook = self._make_adaption_hook(path)
                self._hooks[path] = modules[path].register_forward_hook(hook, with_kwargs=True)
        self.slots[slot] = placed

    def check(self, tensors: PromptTensors) -> None:
        """Refuse what this model cannot run (MultiAdapterModel.parse runs it, so a store refuses it early)."""
        if tensors.kind != "prefix":
            return
        if self.cache_heads is not None:
            _check_prefix_heads(tensors, self.cache_heads)
        if self.kind == "encoder" and not self.position_embeddings:
            raise UnsupportedError(
                f"prefix tuning on {type(self.model).__name__}: Swapyard numbers a bidirectional encoder's tokens "
                "after the prefix through its learned absolute position embeddings, and this model has none. "
                "Use prompt tuning, P-tuning or LoRA on this base."
            )

    def remove(self, slot: int) -> None:
        self.slots.pop(slot, None)
        for per_slot in self._adaption.values():
            per_slot.pop(slot, None)

    def needs_layout(self, row_slots: list[int]) -> bool:
        """True when some row carries virtual tokens or a prefix (LLaMA-Adapter rows only need the hooks)."""
        return any(slot in self.slots and self.slots[slot].kind != "adaption" for slot in row_slots)

    # -- LLaMA-Adapter ----------------------------------------------------------------------------------
    def _adaption_kv(
        self, modules: dict[str, nn.Module], path: str, prompt: torch.Tensor, gate: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prompt's keys and values (1, H, Lp, hd) through the frozen base projections, and the gate.
        The base is frozen, so PEFT's per-call `k_proj(prompt)` is a constant: computed once here."""
        attn: Any = modules[path]
        cfg = self.model.config
        heads, hd = int(cfg.num_attention_heads), int(attn.head_dim)
        with torch.no_grad():
            if cfg.model_type == "gpt2":
                w = _base(attn.c_attn).weight
                p = prompt.to(w)
                _, key, value = _base(attn.c_attn)(p).split(int(cfg.hidden_size), dim=2)  # (1, Lp, hidden)
                k = key.view(1, -1, heads, hd).transpose(1, 2)  # (1, H, Lp, hd)
                v = value.view(1, -1, heads, hd).transpose(1, 2)
            else:
                k_proj = _base(attn.k_proj)
                p = prompt.to(_base(attn.q_proj).weight)
                factor = k_proj.in_features // k_proj.out_features  # query heads per key/value head (GQA)
                k = k_proj(p).view(1, -1, heads // factor, hd).transpose(1, 2)  # (1, H_kv, Lp, hd)
                v = _base(attn.v_proj)(p).view(1, -1, heads // factor, hd).transpose(1, 2)
                k, v = (
                    k.repeat_interleave(factor, dim=1),
                    v.repeat_interleave(factor, dim=1),
                )  # (1, H, Lp, hd)
        return k, v, gate.to(p)

    def _make_adaption_hook(self, path: str) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            ctx = self._holder.current
            per_slot = self._adaption.get(path)
            if ctx is None or not per_slot:
                return output
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # (B, q_len, hidden)
            # rows of a padded batch, or (0, token indices) of a paged step's packed stream (TokenContext)
            index_groups = ctx.index_groups(hidden.shape[1], hidden.device).items()
            groups = [(s, index) for s, index in index_groups if s in per_slot]
            if not groups:
                return output
            out, *rest = output
            out = out.clone()
            for slot, index in groups:
                k, v, gate = per_slot[slot]
                packed = isinstance(index, tuple)
                h = (
                    hidden[index][None] if packed else hidden[index]
                )  # (b, q_len, hidden); packed: (1, n, hidden)
                extra = self._adaption_term(module, h, k, v, gate, kwargs, index)
                out[index] = (out[index] + (extra[0] if packed else extra)).to(hidden.dtype)
            return (out, *rest)

        return hook

    def _adaption_term(
        self,
        attn: Any,
        h: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        gate: torch.Tensor,
        kwargs: dict,
        rows: Any,
    ) -> torch.Tensor:
        """PEFT's AdaptedAttention term for the rows `h` (b, q_len, hidden) -> (b, q_len, hidden)."""
        bsz, q_len, _ = h.shape
        hd = int(attn.head_dim)
        if self.model.config.model_type == "gpt2":
            q = _base(attn.c_attn)(h).split(attn.split_size, dim=2)[0]
            q = q.view(bsz, q_len, -1, hd).transpose(1, 2)  # (b, H, q_len, hd)
            return _gated_attention(q, k, v, gate, hd)  # GPT-2: no c_proj on the adapter term
        q = _base(attn.q_proj)(h).view(bsz, q_len, -1, hd).transpose(1, 2)  # (b, H, q_len, hd)
        cos, sin = kwargs["position_embeddings"]  # (B, q_len, hd): the rows' own positions
        if isinstance(rows, tuple):  # a paged step: (0, token indices) of the packed (1, T) stream
            cos, sin = cos[rows][None], sin[rows][None]
        elif cos.shape[0] != 1:  # per-row positions; a (1, q_len, hd) table is shared by every row
            cos, sin = cos[rows], sin[rows]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * cos + _rotate_half(q) * sin  # RoPE on the query only, as PEFT
        return _base(attn.o_proj)(_gated_attention(q, k, v, gate, hd))

    # -- decoder positions that count cache columns -------------------------------------------------------
    def _shift_positions_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """BART's decoder asks its positional embedding for `cache_length + arange(L)` (as `position_ids`, or
        from `cache_length`); each row gets its own numbering: `position_offset` (≤ 0) added."""
        ctx = self._holder.current
        shift = getattr(ctx, "position_offset", None)
        if shift is None or not bool(shift.any()):
            return output
        ids = args[0] if args else kwargs["input_ids"]
        cache_length = int(args[1]) if len(args) > 1 else int(kwargs.get("cache_length", 0))
        positions = kwargs.get("position_ids")
        out = output.expand(ids.shape[0], *output.shape[-2:]).clone()  # (B, L, d)
        for value in shift.unique().tolist():
            rows = (shift == value).nonzero().flatten()
            own = {"position_ids": positions + value} if positions is not None else {}
            # the module itself, numbering from the rows' own past length (.forward: the hook does not recurse)
            out[rows] = module.forward(ids[rows], cache_length + value, **own).to(out.dtype)
        return out

    def _offset_positions_hook(self, module: nn.Module, args: tuple) -> tuple | None:
        """(B or 1, L) position ids -> plus each row's `position_offset`."""
        offset = getattr(self._holder.current, "position_offset", None)
        if offset is None or not bool(offset.any()):
            return None
        ids = args[0]
        return (ids.expand(offset.shape[0], -1) + offset[:, None].to(ids), *args[1:])

    # -- prefix for encoders ----------------------------------------------------------------------------
    def _encoder_prefix_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        ctx = self._holder.current
        batch = getattr(ctx, "prompt", None)
        if batch is not None and batch.cache is not None:
            kwargs["cache"] = batch.cache
        return args, kwargs
