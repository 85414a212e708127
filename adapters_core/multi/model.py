"""`MultiAdapterModel`: one frozen base model, every row of a batch its own adapter, one forward.

The base model is wrapped once, at construction: every `nn.Linear`, GPT-2 `Conv1D` and `nn.Embedding` becomes
a multi-adapter layer (multi/layers.py) that is exactly the base layer until an adapter is loaded into it.
Adding or removing an adapter writes only that adapter's slot in the layers' device pools — no re-wrapping,
no recompilation, no effect on any other adapter's rows.

    model = MultiAdapterModel(AutoModelForCausalLM.from_pretrained(...))
    model.add("fr", "path/to/lora-fr"); model.add("sql", "org/ia3-sql")
    out = model(input_ids=ids, attention_mask=mask, adapter_names=["fr", None, "sql"])   # None = base

Serving (continuous batching) runs in steps over a paged KV cache (adapters_core/paged/, the contract in
paged/plan.py): `init_kv_cache` once, then one `paged_step(StepPlan)` per step, a packed stream of every row's
prefill chunk or decode token, each row under its own adapter.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kernels.errors import PoolFullError

from ..config import AdapterConfig
from ..errors import AdapterCapacityError, AdapterLoadError, AdapterNotFoundError, UnsupportedError
from ..paged import model_api as paged
from ..paged.plan import StepPlan
from ..weights_io import load_adapter_weights
from .context import ContextHolder, RowContext
from .fused import install_groups
from .layers import (
    MultiEmbedding,
    MultiLinear,
    MultiOverride,
    PoolBudget,
    _MultiBase,
    linear_modules,
    lora_split_width,
    output_embedding_paths,
)
from .parsed import ParsedAdapter, parse_adapter
from .pooling import DEFAULT_POOLING, Pooling, embed_rows
from .prompt_layout import run_forward
from .prompts import PromptStore
from .steps import pad_rows, run_generate
from .vision import ImagePromptStore, refuse_prompt_method, split_label_logits, takes_pixels

AdapterSource = str | os.PathLike[str] | tuple[AdapterConfig, dict[str, torch.Tensor]] | ParsedAdapter | Any


@dataclass
class LoadedAdapter:
    """An adapter resident in the model: its slot and what it changes."""

    name: str
    slot: int
    parsed: ParsedAdapter
    source: str

    @property
    def config(self) -> AdapterConfig:
        return self.parsed.config

    @property
    def content_hash(self) -> str:
        return self.parsed.content_hash


def unpooled_bytes(parsed: ParsedAdapter) -> int:
    """Bytes an adapter keeps on the device outside the kernels' pools: full-module copies (modules_to_save
    heads, saved embeddings, trained biases) and prompt tables."""
    tensors = [t for params in parsed.overrides.values() for t in params.values()]
    tensors += parsed.prompt.tensors() if parsed.prompt is not None else []
    return sum(t.numel() * t.element_size() for t in tensors)


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, attr, module)


class MultiAdapterModel(nn.Module):
    """The serving form of adapters: `forward/generate(..., adapter_names=[...])`, one name per row.

    Args:
        base_model: a transformers model (causal LM, seq2seq, sequence classification, or an image classifier
            or semantic segmenter that takes `pixel_values`: multi/vision.py); frozen here.
        max_adapters: slots, i.e. adapters resident at once.
        adapter_memory_bytes: LoRA weight budget for all layers together (split by layer width; lm_head is left
            out of the split and its pool, made only when an adapter targets it, comes on top: layers.PoolBudget).
        rank_capacity: the largest LoRA rank one adapter may have.
        unpooled_memory_bytes: budget of what resident adapters hold outside the pools (full-module copies:
            modules_to_save heads, saved embeddings, trained biases; prompt tables); default
            `adapter_memory_bytes`. Slots, pools and this are the model's whole device budget: `add` raises
            `AdapterCapacityError` when one of them is full.
    """

    def __init__(
        self,
        base_model: nn.Module,
        *,
        max_adapters: int = 32,
        adapter_memory_bytes: int = 256 << 20,
        rank_capacity: int = 256,
        unpooled_memory_bytes: int | None = None,
    ) -> None:
        super().__init__()
        base_model.eval()
        base_model.requires_grad_(False)
        self.model = base_model
        self.max_adapters = max_adapters
        self.unpooled_memory_bytes = (
            adapter_memory_bytes if unpooled_memory_bytes is None else unpooled_memory_bytes
        )
        self._holder = ContextHolder()
        self._base_modules: dict[str, nn.Module] = dict(base_model.named_modules())
        linear = linear_modules(base_model)
        quantized = [p for p, m in linear.items() if not m.weight.dtype.is_floating_point]
        if quantized:
            # bitsandbytes (and other) quantized layers keep integer weights: the pools and kernels are float.
            raise UnsupportedError(
                f"{quantized[0]} (and {len(quantized) - 1} more) hold quantized {linear[quantized[0]].weight.dtype} "
                "weights: the serving form runs over float bases only. Serve a float16/bfloat16/float32 base, or "
                "use AdapterModel, which runs LoRA, IA3 and AdaLoRA over bitsandbytes layers."
            )
        budget = PoolBudget(
            adapter_memory_bytes,
            lora_split_width(base_model),
            max_adapters,
            rank_capacity,
            outside=output_embedding_paths(base_model),
        )
        self._layers: dict[str, _MultiBase] = {}
        for path, module in self._base_modules.items():
            if path in linear:
                self._layers[path] = MultiLinear(module, path, self._holder, budget)
            elif isinstance(module, nn.Embedding):
                self._layers[path] = MultiEmbedding(module, path, self._holder)
        for path, layer in self._layers.items():
            _set_submodule(base_model, path, layer)
        self._sibling_groups = install_groups(self._layers.items())  # q/k/v, gate/up: one shrink (fused.py)
        # Prompt-family rows (prompt/P-tuning tables, prefixes, LLaMA-Adapter): per-slot state plus hooks that
        # are installed once and stay inert for other rows (multi/prompts.py). Image bases take none (vision.py).
        self.takes_pixels = takes_pixels(base_model)
        store = ImagePromptStore if self.takes_pixels else PromptStore
        self._prompts = store(base_model, self._holder)
        self._adapters: dict[str, LoadedAdapter] = {}
        # Bumped by add/remove: the CUDA-graph decode runner re-checks which adapters it can serve (paged/graphs.py).
        self._epoch = 0

    # -- adapters ---------------------------------------------------------------------------------
    @property
    def adapters(self) -> dict[str, LoadedAdapter]:
        """Resident adapters by name (a copy)."""
        return dict(self._adapters)

    def _free_slot(self) -> int:
        used = {a.slot for a in self._adapters.values()}
        for slot in range(self.max_adapters):
            if slot not in used:
                return slot
        raise AdapterCapacityError(
            f"all {self.max_adapters} adapter slots are in use; remove one first or raise max_adapters."
        )

    def _read(
        self, source: AdapterSource, **kwargs: Any
    ) -> tuple[AdapterConfig, dict[str, torch.Tensor], str]:
        if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], AdapterConfig):
            return source[0], dict(source[1]), "memory"
        if hasattr(source, "base_model") and hasattr(source, "peft_config"):  # an AdapterModel
            adapter_model: Any = source
            name = adapter_model.active_adapter
            state = adapter_model.base_model.state_dict_to_save(name)
            return adapter_model.peft_config[name], state, f"AdapterModel:{name}"
        path = os.fspath(source)  # type: ignore[arg-type]
        hub = {
            k: kwargs[k] for k in ("revision", "subfolder", "cache_dir", "token") if kwargs.get(k) is not None
        }
        config = AdapterConfig.from_pretrained(path, **hub)
        state = load_adapter_weights(path, allow_pickle=kwargs.get("allow_pickle", True), **hub)
        return config, state, path

    def parse(self, config: AdapterConfig, state: dict[str, torch.Tensor]) -> ParsedAdapter:
        """Check an adapter (PEFT keys) against this base and normalise it, without loading it: exactly the
        validation `add` runs first (a store validates uploads with it before they become visible)."""
        if self.takes_pixels:
            refuse_prompt_method(config, self.model)
        parsed = parse_adapter(config, state, self._base_modules)
        if parsed.prompt is not None:
            self._prompts.check(
                parsed.prompt
            )  # what only the running model can tell (e.g. its cache's heads)
        return parsed

    def add(self, name: str, source: AdapterSource, **kwargs: Any) -> LoadedAdapter:
        """Load an adapter under `name` from a local directory, a Hub id (kwargs: revision, subfolder,
        cache_dir, token, allow_pickle), an `AdapterModel` (its active adapter), a `(config, state_dict)`
        pair with PEFT keys, or a `ParsedAdapter` that this model's `parse` returned (it is not parsed
        again: a store parses once, keeps the result and adds it when it makes the adapter resident).
        Every tensor is checked against the base before anything is written.

        Raises `AdapterCapacityError` when every slot is taken or a layer's pool has too few free pages
        (nothing is written then); the caller frees room with `remove` and adds again."""
        if name in self._adapters:
            raise AdapterLoadError(f"an adapter named {name!r} is already loaded; remove it first.")
        if isinstance(source, ParsedAdapter):
            parsed, where = source, "parsed"
        else:
            config, state, where = self._read(source, **kwargs)
            parsed = self.parse(config, state)
        self._check_unpooled(name, parsed)
        slot = self._free_slot()
        touched: list[_MultiBase] = []
        try:
            for path, t in parsed.lora.items():
                layer = self._layers[path]
                touched.append(layer)
                layer.load_lora(slot, t)
            for path, (vec, feedforward) in parsed.ia3.items():
                layer = self._layers[path]
                touched.append(layer)
                layer.load_ia3(slot, vec, feedforward)
            for path, params in parsed.overrides.items():
                layer = self._layers.get(path) or self._wrap_other(path)
                touched.append(layer)
                layer.set_override(slot, params)
            if parsed.prompt is not None:
                self._prompts.load(slot, parsed.prompt, self._base_modules)
        except Exception as exc:
            for layer in touched:
                layer.remove_slot(slot)
            self._prompts.remove(slot)
            if isinstance(exc, PoolFullError):  # the kernels' pool error, as adapters_core's own
                raise AdapterCapacityError(
                    f"adapter {name!r} does not fit: {exc}. Remove an adapter first, or raise "
                    "adapter_memory_bytes."
                ) from exc
            raise
        loaded = LoadedAdapter(name=name, slot=slot, parsed=parsed, source=where)
        self._adapters[name] = loaded
        self._epoch += 1
        return loaded

    def _check_unpooled(self, name: str, parsed: ParsedAdapter) -> None:
        need = unpooled_bytes(parsed)
        used = sum(unpooled_bytes(a.parsed) for a in self._adapters.values())
        if used + need > self.unpooled_memory_bytes:
            raise AdapterCapacityError(
                f"adapter {name!r} does not fit: its module copies and prompt tables take {need} bytes, and "
                f"{used} of {self.unpooled_memory_bytes} (unpooled_memory_bytes) are in use. Remove an adapter "
                "first, or raise the budget."
            )

    def _wrap_other(self, path: str) -> _MultiBase:
        layer = MultiOverride(self._base_modules[path], path, self._holder)
        _set_submodule(self.model, path, layer)
        self._layers[path] = layer
        return layer

    def remove(self, name: str) -> None:
        """Unload `name`, freeing its slot and pool memory; other adapters' rows are unaffected."""
        loaded = self._get(name)
        for layer in self._layers.values():
            if loaded.slot in layer.slots:
                layer.remove_slot(loaded.slot)
        self._prompts.remove(loaded.slot)
        del self._adapters[name]
        self._epoch += 1

    def _get(self, name: str) -> LoadedAdapter:
        try:
            return self._adapters[name]
        except KeyError:
            raise AdapterNotFoundError(
                f"no adapter named {name!r} is loaded (loaded: {sorted(self._adapters)}); add it first, "
                "or pass None for the base model."
            ) from None

    def row_slots(self, adapter_names: Sequence[str | None], batch_size: int) -> list[int]:
        """Slots of `adapter_names` (None -> -1); an unknown name is an error, never the base model."""
        if len(adapter_names) != batch_size:
            raise ValueError(
                f"adapter_names has {len(adapter_names)} entries for a batch of {batch_size} rows."
            )
        return [-1 if n is None else self._get(n).slot for n in adapter_names]

    @contextmanager
    def rows(self, row_slots: list[int] | RowContext) -> Iterator[RowContext]:
        """Apply `row_slots` (or a running batch's own context) to every layer for the duration of the block."""
        if self._holder.current is not None:
            raise RuntimeError("MultiAdapterModel is not re-entrant: a forward is already running.")
        self._holder.current = row_slots if isinstance(row_slots, RowContext) else RowContext(row_slots)
        try:
            yield self._holder.current
        finally:
            self._holder.current = None

    # -- running ------------------------------------------------------------------------------------
    @staticmethod
    def _batch_size(kwargs: dict[str, Any]) -> int:
        for key in ("input_ids", "inputs_embeds", "pixel_values"):
            if kwargs.get(key) is not None:
                return int(kwargs[key].shape[0])
        raise ValueError("pass input_ids (or inputs_embeds), or pixel_values to an image model")

    def forward(self, *, adapter_names: Sequence[str | None] | None = None, **kwargs: Any) -> Any:
        """The base model's forward, row i with adapter `adapter_names[i]` (all None when omitted).

        Every row gets what its adapter alone would give it with its own tokens: per-token outputs cover the
        real positions only, (B, L, ·) aligned with `input_ids` (no virtual prompt positions), and a causal LM's
        positions count each row's real tokens (padding never shifts them). See multi/prompts.py.
        """
        batch = self._batch_size(kwargs)
        slots = self.row_slots(adapter_names if adapter_names is not None else [None] * batch, batch)
        with self.rows(slots) as ctx:
            return run_forward(self._prompts, ctx, kwargs)

    @torch.no_grad()
    def generate(self, *, adapter_names: Sequence[str | None] | None = None, **kwargs: Any) -> Any:
        """Greedy or sampled decoding, row i under adapter `adapter_names[i]`; each row's greedy result equals
        that row generated alone. Batches with prompt tuning, P-tuning or prefix rows use Swapyard's loop
        (steps.py, the kwargs of prompt_learning/generation.py); others use `transformers` generate."""
        if self.takes_pixels:
            raise ValueError(f"{type(self.model).__name__} does not generate; use classify_images().")
        batch = self._batch_size(kwargs)
        slots = self.row_slots(adapter_names if adapter_names is not None else [None] * batch, batch)
        if kwargs.get("num_beams", 1) != 1 or kwargs.get("num_return_sequences", 1) != 1:
            raise ValueError(
                "per-row adapters support greedy and sampled generation with one sequence per row."
            )
        with self.rows(slots) as ctx:
            if self._prompts.needs_layout(slots):
                # virtual tokens / prefixes enter once, at prefill: Swapyard's decoding loop (steps.py)
                return run_generate(self._prompts, ctx, kwargs)
            return self.model.generate(**kwargs)  # type: ignore[operator]

    def _device(self) -> torch.device:
        if self.takes_pixels:  # no token embeddings
            return next(self.model.parameters()).device
        return self._prompts.embed.weight.device

    # -- the paged engine core (issue 16, adapters_core/paged/) ----------------------------------------
    def paged_support(self) -> str | None:
        """None when this base runs on the paged core (`paged_step`); else why it does not (the server then
        refuses to serve it: it generates on the paged core only)."""
        return paged.support(self)

    def stream_prefix_length(self, adapter: str | None) -> int:
        """Virtual positions that open a row's stream under `adapter` (prompt / P-tuning), else 0."""
        return paged.stream_prefix_length(self, adapter)

    def kv_block_bytes(self, block_size: int) -> int:
        """Bytes one KV block of `block_size` positions takes over all layers, keys and values."""
        return paged.kv_block_bytes(self, block_size)

    def init_kv_cache(self, num_blocks: int, block_size: int) -> None:
        """Preallocate the paged KV pool: `num_blocks` blocks of `block_size` positions on the model's device."""
        paged.init_kv_cache(self, num_blocks, block_size)

    @property
    def reserved_blocks(self) -> int:
        """Leading block ids the scheduler must not hand out (block 0 is the scratch block)."""
        return paged.RESERVED_BLOCKS

    @torch.no_grad()
    def copy_kv_block(self, src: int, dst: int) -> None:
        """KV block `dst` gets block `src`'s keys and values in every layer (a forked row's partial block)."""
        paged.copy_kv_block(self, src, dst)

    @torch.no_grad()
    def paged_step(self, plan: StepPlan) -> torch.Tensor:
        """Run one step (paged/plan.py): (n, V) float logits, one per chunk with `want_logits`, in plan order."""
        return paged.paged_step(self, plan)

    def paged_decoder_prompt(self) -> list[int] | None:
        """Encoder-decoder bases: the decoder stream every row starts with (`[decoder_start_token_id]`); the
        row's prompt goes to the encoder (`SeqChunk.encoder_ids`). None for decoder-only bases."""
        return paged.paged_decoder_prompt(self)

    def paged_encoder_bytes(self, adapter: str | None, input_length: int) -> int:
        """Bytes the model keeps outside the block pool for a row of `input_length` prompt tokens under `adapter`
        while it runs: an encoder-decoder row's encoder keys/values (paged/seq2seq.py); 0 for other bases."""
        return paged.paged_encoder_bytes(self, adapter, input_length)

    def paged_release(self, seq_id: int) -> None:
        """The row left (finished, failed or preempted): free what the model keeps for it outside the block pool
        (an encoder-decoder row's encoder keys/values, paged/seq2seq.py). Idempotent; a no-op for other rows."""
        paged.paged_release(self, seq_id)

    @torch.no_grad()
    def classify(
        self, input_ids: Sequence[Sequence[int]], adapter_names: Sequence[str | None]
    ) -> list[torch.Tensor]:
        """Sequence classification: per row its logits (C_i,), C_i the width of that row's adapter head (the
        base head for None) — no padding between rows with heads of different label counts."""
        if self.takes_pixels:
            raise ValueError(f"{type(self.model).__name__} takes images, not tokens; use classify_images().")
        if not input_ids or any(len(r) == 0 for r in input_ids):
            raise ValueError("classify() needs at least one row, and at least one token in every row.")
        ids, mask = pad_rows(input_ids, left=self._prompts.kind == "causal", device=self._device())
        logits = self(input_ids=ids, attention_mask=mask, adapter_names=adapter_names).logits  # (B, C_max)
        if logits.dim() != 2:
            raise ValueError(
                f"{type(self.model).__name__} is not a sequence classifier (logits {logits.shape})."
            )
        # Heads narrower than the widest in the batch are padded with -inf on the right (layers.py overrides).
        real = logits != float("-inf")  # (B, C_max)
        widths = (real * torch.arange(1, logits.shape[1] + 1, device=logits.device)).amax(dim=1).tolist()
        return [row[:w] for row, w in zip(logits, widths)]

    def embed(
        self,
        input_ids: Sequence[Sequence[int]],
        adapter_names: Sequence[str | None],
        pooling: Pooling | None = None,
    ) -> torch.Tensor:
        """Sentence embeddings (N, d): each row's last hidden states under its adapter, pooled over its real
        tokens (multi/pooling.py); `pooling` defaults to the base's kind (cls encoder, last causal, mean T5)."""
        kind = self._prompts.kind
        return embed_rows(self, kind, input_ids, adapter_names, pooling or DEFAULT_POOLING[kind])

    @torch.no_grad()
    def classify_images(
        self, pixel_values: torch.Tensor, adapter_names: Sequence[str | None]
    ) -> list[torch.Tensor]:
        """Image classification or semantic segmentation of `pixel_values` (B, C, H, W), as the base's image
        processor makes them: per row its logits, (C_i,) or (C_i, h, w) with C_i the labels of that row's
        adapter head (the base head for None) — no padding between heads of different label counts."""
        if not self.takes_pixels:
            raise ValueError(f"{type(self.model).__name__} takes input_ids, not images; use classify().")
        ref = next(self.model.parameters())
        pixels = pixel_values.to(device=ref.device, dtype=ref.dtype)
        logits = self(pixel_values=pixels, adapter_names=adapter_names).logits  # (B, C_max[, h, w])
        return split_label_logits(logits)
