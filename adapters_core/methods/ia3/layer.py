"""IA³ layers for `nn.Linear` and `Conv1D` (reference §6.2, §6.3).

`ia3_l[name]` is a ParameterDict entry: shape (out, 1) for ordinary layers, whose output it scales, and
(1, in) for feed-forward layers, whose input it scales. Several active adapters multiply.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...tuners.layer import TunerLayer, adapter_dtype, is_conv1d


class Linear(TunerLayer):
    """Forward, x: (..., in): non-feedforward `y = base(x) ⊙ l` (l over out); feedforward `y = base(x ⊙ l)`."""

    adapter_layer_names = ("ia3_l",)
    ia3_l: Any  # ParameterDict: adapter name -> (out, 1) or (1, in)

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, is_feedforward: bool, init_ia3_weights: bool
    ):
        super().__init__(base_layer)
        self.is_feedforward = is_feedforward
        self.fan_in_fan_out = is_conv1d(base_layer)  # PEFT forces the flag to the layer type
        self.ia3_l = nn.ParameterDict({})
        self.update_layer(adapter_name, init_ia3_weights)

    def update_layer(self, adapter_name: str, init_ia3_weights: bool) -> None:
        shape = (1, self.in_features) if self.is_feedforward else (self.out_features, 1)
        weight = self.base_layer.weight
        kw: dict[str, Any] = {"device": weight.device, "dtype": adapter_dtype(weight)}
        value = torch.ones(shape, **kw) if init_ia3_weights else torch.randn(shape, **kw)
        self.ia3_l[adapter_name] = nn.Parameter(value)

    def shape_spec(self, container: str, adapter_name: str) -> tuple[tuple[str, int], ...]:
        if self.is_feedforward:
            return (("feedforward vector", 1), ("in_features", self.in_features))
        return (("out_features", self.out_features), ("vector", 1))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.adapters_bypassed():
            return self.base_layer(x, *args, **kwargs)
        dtype = previous_dtype = x.dtype
        scale: torch.Tensor | float = 1.0
        for name in self.active_adapters:
            if name in self.ia3_l:
                dtype = self.ia3_l[name].dtype
                scale = scale * self.ia3_l[name].flatten()
        if self.is_feedforward:
            return self.base_layer((x.to(dtype) * scale).to(previous_dtype), *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        return (result * scale).to(result.dtype)

    def _weight_scale(self, adapter_name: str) -> torch.Tensor:
        """l shaped to broadcast over the base weight in its own layout (Conv1D stores (in, out))."""
        vec = self.ia3_l[adapter_name].data
        return vec.T if self.fan_in_fan_out else vec

    def merge(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        self.refuse_quantized_merge("IA3")
        for name in self.adapters_to_merge(adapter_names):
            base = self.base_layer
            new_weight = base.weight.data * self._weight_scale(name)
            new_weight = self.checked_merge(new_weight, name, safe_merge)
            base.weight.data = new_weight.to(base.weight.dtype)
            if not self.is_feedforward and base.bias is not None:
                base.bias.data = (base.bias.data * self.ia3_l[name].reshape(base.bias.shape)).to(
                    base.bias.dtype
                )
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Divide back by `l + 1e-8` (inexact, as PEFT warns)."""
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            base = self.base_layer
            base.weight.data = (base.weight.data / (self._weight_scale(name) + 1e-8)).to(base.weight.dtype)
            if not self.is_feedforward and base.bias is not None:
                scale = self.ia3_l[name].reshape(base.bias.shape)
                base.bias.data = (base.bias.data / (scale + 1e-8)).to(base.bias.dtype)
