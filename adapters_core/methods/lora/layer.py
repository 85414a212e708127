"""LoRA layers for `nn.Linear` and GPT-2's `Conv1D` (reference §5.2–5.6).

Live layout, as PEFT's: `base_layer`, `lora_A[name]: nn.Linear(in, r)`, `lora_B[name]: nn.Linear(r, out)`,
`lora_magnitude_vector[name]` (DoRA), plus empty `lora_embedding_A/B` ParameterDicts. Conv1D keeps
the nn.Linear convention for A and B; only merging transposes (`fan_in_fan_out`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...tuners.layer import TunerLayer, adapter_dtype, is_conv1d
from ...tuners.quantized import bnb_kind, dequantized_weight, write_quantized_weight
from .config import LoraConfig
from .dora import DoraLinearLayer


def transpose(weight: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    return weight.T if fan_in_fan_out else weight


def lora_scaling(lora_alpha: float, r: int, use_rslora: bool) -> float:
    """`alpha / r`, or `alpha / sqrt(r)` for rsLoRA (reference §5.3)."""
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


class LoraLayer(TunerLayer):
    """Per-adapter LoRA state shared by the Linear and Embedding layers."""

    adapter_layer_names = (
        "lora_A",
        "lora_B",
        "lora_embedding_A",
        "lora_embedding_B",
        "lora_magnitude_vector",
    )
    # per-adapter containers (ModuleDict / ParameterDict), typed loosely: items are Linear, Parameter, DoRA
    lora_A: Any
    lora_B: Any
    lora_embedding_A: Any
    lora_embedding_B: Any
    lora_magnitude_vector: Any

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.use_dora: dict[str, bool] = {}
        self.lora_bias: dict[str, bool] = {}
        self.lora_dropout = nn.ModuleDict({})
        self.lora_A = nn.ModuleDict({})
        self.lora_B = nn.ModuleDict({})
        self.lora_embedding_A = nn.ParameterDict({})
        self.lora_embedding_B = nn.ParameterDict({})
        self.lora_magnitude_vector = nn.ModuleDict({})

    def per_adapter_settings(self) -> tuple[str, ...]:
        return ("r", "lora_alpha", "scaling", "use_dora", "lora_bias", "lora_dropout")

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config: LoraConfig) -> None:
        raise NotImplementedError

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """ΔW of one adapter in the base layer's own layout (includes scaling)."""
        raise NotImplementedError

    def _set_common(self, adapter_name: str, r: int, lora_alpha: float, config: LoraConfig) -> None:
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_scaling(lora_alpha, r, config.use_rslora)
        self.use_dora[adapter_name] = config.use_dora
        self.lora_bias[adapter_name] = config.lora_bias
        drop = config.lora_dropout
        self.lora_dropout[adapter_name] = nn.Dropout(p=drop) if drop > 0.0 else nn.Identity()

    def _merged_bias(self, adapter_name: str) -> torch.Tensor | None:
        """The base bias with the adapter's `lora_B.bias` folded in (`lora_bias=True`), else None."""
        if not self.lora_bias.get(adapter_name):
            return None
        if self.base_layer.bias is None:
            raise RuntimeError("cannot merge LoRA with lora_bias=True into a base layer without bias.")
        return self.base_layer.bias.data + self.lora_B[adapter_name].bias * self.scaling[adapter_name]

    def _write_bias(self, new_bias: torch.Tensor | None) -> None:
        if new_bias is not None:
            self.base_layer.bias.data = new_bias.to(self.base_layer.bias.dtype)

    def _unmerge_bias(self, adapter_name: str) -> None:
        if self.lora_bias.get(adapter_name):
            self.base_layer.bias.data -= self.lora_B[adapter_name].bias * self.scaling[adapter_name]

    def _init_weights(self, adapter_name: str, init: bool | str) -> None:
        """PEFT's `reset_lora_parameters`: A kaiming-uniform (or gaussian), B zeros, so the adapter starts as a no-op."""
        a, b = self.lora_A[adapter_name], self.lora_B[adapter_name]
        if init is False:
            return  # PEFT leaves nn.Linear's default init: the adapter is not a no-op
        with torch.no_grad():
            if isinstance(init, str) and init.lower() == "gaussian":
                nn.init.normal_(a.weight, std=1 / self.r[adapter_name])
            else:
                nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            nn.init.zeros_(b.weight)
            if b.bias is not None:
                nn.init.zeros_(b.bias)


class Linear(LoraLayer):
    """LoRA over `nn.Linear` or `Conv1D`.

    Forward (eval), x: (..., in) → y: (..., out):
        y = base(x) + scaling · B(A(x))                      plain LoRA
        y = base(x) + (m/n - 1) ⊙ (base(x) - b) + (m/n) ⊙ scaling · B(A(x))   DoRA, n = ||W + scaling·BA||_row
    """

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, r: int, lora_alpha: float
    ):
        super().__init__(base_layer)
        # PEFT forces fan_in_fan_out to the layer type whatever the config says (reference §5.4)
        self.fan_in_fan_out = is_conv1d(base_layer)
        self.update_layer(adapter_name, r, lora_alpha, config)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config: LoraConfig) -> None:
        self._set_common(adapter_name, r, lora_alpha, config)
        weight = self.base_layer.weight
        kw: dict[str, Any] = {"device": weight.device, "dtype": adapter_dtype(weight)}
        self.lora_A[adapter_name] = nn.Linear(self.in_features, r, bias=False, **kw)
        self.lora_B[adapter_name] = nn.Linear(r, self.out_features, bias=config.lora_bias, **kw)
        self._init_weights(adapter_name, config.init_lora_weights)
        if config.use_dora:
            dora = DoraLinearLayer(self.fan_in_fan_out)
            dora.init_magnitude(
                self._base_weight_rows(), self._delta_rows(adapter_name, self.scaling[adapter_name])
            )
            self.lora_magnitude_vector[adapter_name] = dora

    # -- shapes for load-time messages ------------------------------------------------------------
    def shape_spec(self, container: str, adapter_name: str) -> tuple[tuple[str, int], ...]:
        r = self.r[adapter_name]
        if container == "lora_A":
            return (("r", r), ("in_features", self.in_features))
        if container == "lora_B":
            return (("out_features", self.out_features), ("r", r))
        return (("out_features", self.out_features),)  # lora_magnitude_vector

    # -- math ----------------------------------------------------------------------------------
    def _base_weight_rows(self) -> torch.Tensor:
        """Base weight in (out, in) layout, whatever the module stores (bitsandbytes: dequantized)."""
        return transpose(dequantized_weight(self.base_layer), self.fan_in_fan_out)

    def _delta_rows(self, adapter_name: str, scaling: float) -> torch.Tensor:
        """scaling · B A in (out, in) layout."""
        return scaling * (self.lora_B[adapter_name].weight @ self.lora_A[adapter_name].weight)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """ΔW in the base layer's own layout (Conv1D: (in, out)), computed in fp32 on CPU for half adapters."""
        a = self.lora_A[adapter_name].weight
        b = self.lora_B[adapter_name].weight
        half = a.device.type == "cpu" and a.dtype in (torch.float16, torch.bfloat16)
        delta = (b.float() @ a.float()) if half else (b @ a)
        delta = transpose(delta, self.fan_in_fan_out) * self.scaling[adapter_name]
        return delta.to(a.dtype) if half else delta

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        bypassed = self.adapters_bypassed()  # first: a disabled merged layer unmerges before running
        result = self.base_layer(x, *args, **kwargs)
        if bypassed:
            return result
        result_dtype = result.dtype
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_a, lora_b = self.lora_A[name], self.lora_B[name]
            scaling = self.scaling[name]
            xa = x.to(lora_a.weight.dtype)
            if name in self.lora_magnitude_vector:
                result = result + self.lora_magnitude_vector[name](
                    xa,
                    lora_a=lora_a,
                    lora_b=lora_b,
                    scaling=scaling,
                    base_layer=self.base_layer,
                    base_result=result,
                )
            else:
                result = result + lora_b(lora_a(self.lora_dropout[name](xa))) * scaling
        return result.to(result_dtype)

    def merge(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        """Fold adapters into the base weight; a bitsandbytes base is dequantized, merged and re-quantized as
        PEFT does (so a merged 4-/8-bit model differs from the unmerged one by rounding)."""
        for name in self.adapters_to_merge(adapter_names):
            if name not in self.lora_A:
                continue
            base = self.base_layer
            weight = dequantized_weight(base).data
            if name in self.lora_magnitude_vector:
                new_weight = self.lora_magnitude_vector[name].merged_weight(
                    weight, self.get_delta_weight(name), name
                )
            else:
                new_weight = weight + self.get_delta_weight(name).to(weight.dtype)
            new_bias = self._merged_bias(name)
            if new_bias is not None:  # a trained bias (bias="all"/"lora_only") can be broken too
                new_bias = self.checked_merge(new_bias, name, safe_merge)
            self._write_weight(self.checked_merge(new_weight, name, safe_merge))
            self._write_bias(new_bias)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name not in self.lora_A:
                continue
            weight = dequantized_weight(self.base_layer).data
            delta = self.get_delta_weight(name)
            if name in self.lora_magnitude_vector:
                self._write_weight(self.lora_magnitude_vector[name].unmerged_weight(weight, delta, name))
            else:
                self._write_weight(weight - delta.to(weight.dtype))
            self._unmerge_bias(name)

    def _write_weight(self, new_weight: torch.Tensor) -> None:
        if bnb_kind(self.base_layer) is not None:
            write_quantized_weight(self.base_layer, new_weight)
        else:
            self.base_layer.weight.data = new_weight.to(self.base_layer.weight.dtype)
