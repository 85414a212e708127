"""The base of every injected adapter layer (PEFT's `BaseTunerLayer`).

A tuner layer replaces one module of the transformers model. It keeps the original as `base_layer` and holds
each adapter's tensors in `nn.ModuleDict` / `nn.ParameterDict` containers keyed by adapter name, so the live
parameter names are PEFT's (`…q_proj.lora_A.default.weight`, `…k_proj.ia3_l.default`) and the saved keys
follow by dropping the adapter name (reference §3.1).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import UnsupportedError
from .quantized import bnb_kind


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's `transformers.pytorch_utils.Conv1D` (weight stored as (in, out))."""
    return type(module).__name__ == "Conv1D"


CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def base_layer_dims(module: nn.Module, name: str = "") -> tuple[int, int]:
    """`(in_features, out_features)` of a Linear or Conv1D; `(num_embeddings, embedding_dim)` of an Embedding;
    `(in_channels, out_channels)` of an `nn.Conv1d/2d/3d`."""
    if isinstance(module, CONV_TYPES):
        return module.in_channels, module.out_channels
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_conv1d(module):
        fan_in, fan_out = module.weight.shape  # type: ignore[misc]  # Conv1D.weight is (in, out)
        return int(fan_in), int(fan_out)
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    raise UnsupportedError(
        f"{name or type(module).__name__}: module type {type(module).__name__} cannot be adapted; Swapyard supports "
        "nn.Linear, GPT-2's Conv1D, nn.Embedding and (LoRA only) nn.Conv1d/2d/3d. Narrow target_modules to such "
        "layers."
    )


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """PEFT autocasts fp16/bf16 adapter parameters to float32 (reference §1); fp32/fp64 bases keep theirs."""
    return weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32


class TunerLayer(nn.Module):
    """A module wrapped with per-adapter tensors.

    Subclasses list their per-adapter containers in `adapter_layer_names` (the trainable tensors, saved) and
    implement `forward`, `merge`, `unmerge` and `shape_spec`.
    """

    adapter_layer_names: ClassVar[tuple[str, ...]] = ()
    base_layer: Any  # the wrapped Linear / Conv1D / Embedding (typed loosely: its attributes vary)

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer_dims(base_layer)
        self.active_adapters: list[str] = []
        self.disable_adapters = False
        self.merged_adapters: list[str] = []

    # -- the wrapped module, as transformers code sometimes reads it (T5 reads `self.wo.weight.dtype`) --
    def get_base_layer(self) -> nn.Module:
        return self.base_layer

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    # -- adapter bookkeeping ----------------------------------------------------------------------
    def adapter_names(self) -> list[str]:
        """Adapters that have tensors in this layer."""
        names: set[str] = set()
        for container in self.adapter_layer_names:
            names.update(getattr(self, container).keys())
        return sorted(names)

    def has_adapter(self, adapter_name: str) -> bool:
        return any(adapter_name in getattr(self, c) for c in self.adapter_layer_names)

    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False) -> None:
        """Activate adapters; their tensors become trainable unless `inference_mode` (PEFT's semantics)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        for container in self.adapter_layer_names:
            for key, item in getattr(self, container).items():
                item.requires_grad_((key in names) and not inference_mode)
        self.active_adapters = names

    def enable_adapters(self, enabled: bool) -> None:
        self.disable_adapters = not enabled

    def delete_adapter(self, adapter_name: str) -> None:
        """Drop the adapter's tensors and per-adapter settings from this layer."""
        for container in self.adapter_layer_names:
            store = getattr(self, container)
            if adapter_name in store:
                del store[adapter_name]
        for attr in self.per_adapter_settings():
            store = getattr(self, attr)
            if adapter_name in store:
                del store[adapter_name]
        if adapter_name in self.active_adapters:
            remaining = self.adapter_names()
            self.active_adapters = [a for a in self.active_adapters if a != adapter_name] or remaining[:1]

    def per_adapter_settings(self) -> tuple[str, ...]:
        """Names of plain dicts / ModuleDicts keyed by adapter name that hold no saved tensors."""
        return ()

    # -- what subclasses provide ----------------------------------------------------------------
    def shape_spec(self, container: str, adapter_name: str) -> tuple[tuple[str, int], ...]:
        """The expected shape of a tensor as (dimension name, size) pairs, for load-time error messages."""
        raise NotImplementedError

    def merge(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        raise NotImplementedError

    def unmerge(self) -> None:
        raise NotImplementedError

    def adapters_bypassed(self) -> bool:
        """True when the forward is the base layer alone: adapters disabled (a merged layer is unmerged
        first, as PEFT does) or already merged into the weights."""
        if self.disable_adapters and self.merged:
            self.unmerge()
        return self.disable_adapters or self.merged

    @staticmethod
    def checked_merge(new_weight: torch.Tensor, adapter_name: str, safe_merge: bool) -> torch.Tensor:
        """`new_weight`, after PEFT's `safe_merge` check (NaN/Inf -> ValueError naming the adapter)."""
        if safe_merge and not bool(torch.isfinite(new_weight).all()):
            raise ValueError(
                f"NaNs detected in the merged weights. The adapter {adapter_name} seems to be broken"
            )
        return new_weight

    def refuse_quantized_merge(self, method: str) -> None:
        """PEFT merges only LoRA into bitsandbytes layers; other methods raise instead of corrupting packed data."""
        kind = bnb_kind(self.base_layer)
        if kind is not None:
            raise UnsupportedError(
                f"cannot merge {method} into a bitsandbytes {kind} layer (PEFT cannot either); keep the adapter "
                "unmerged, or load the base model unquantized to merge."
            )

    def adapters_to_merge(self, adapter_names: list[str] | None) -> list[str]:
        """The adapters of `adapter_names` (default: the active ones) that are present and not merged yet."""
        names = self.active_adapters if adapter_names is None else adapter_names
        return [a for a in names if a not in self.merged_adapters and self.has_adapter(a)]

    def extra_repr(self) -> str:
        return f"adapters={self.adapter_names()}, active={self.active_adapters}"


def describe_shape_mismatch(
    module_name: str, tensor_name: str, got: tuple[int, ...], spec: tuple[tuple[str, int], ...]
) -> str:
    """Message naming the module, the tensor and the first dimension that does not fit.

    Example: "model.layers.0.self_attn.q_proj: lora_A has shape (4, 128) but the base layer has in_features=64
    — adapter trained for another model?"
    """
    expected = tuple(size for _, size in spec)
    if len(got) != len(expected):
        return (
            f"{module_name}: {tensor_name} has shape {tuple(got)} but this layer expects {len(expected)} dimensions "
            f"{expected} — adapter trained for another model?"
        )
    for (dim_name, size), actual in zip(spec, got):
        if actual == size:
            continue
        if dim_name in ("r", "rank"):
            return (
                f"{module_name}: {tensor_name} has shape {tuple(got)} but the config gives this module "
                f"r={size} — the adapter_config.json does not match its weights (rank_pattern?)."
            )
        return (
            f"{module_name}: {tensor_name} has shape {tuple(got)} but the base layer has {dim_name}={size} "
            "— adapter trained for another model?"
        )
    return f"{module_name}: {tensor_name} has shape {tuple(got)}, expected {expected}."
