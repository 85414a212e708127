"""AdaLoRA's SVD layer over `nn.Linear`/`Conv1D` (reference §7.1, §7.2).

Tensors (ParameterDicts, saved without `.weight`): `lora_A (r, in)`, `lora_E (r, 1)`, `lora_B (out, r)`, plus
`ranknum (1,)`, a frozen parameter that is never saved. Forward, x: (..., in):
    y = base(x) + (x · (A ⊙ E)ᵀ · Bᵀ) · scaling / (ranknum + 1e-5)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...tuners.layer import TunerLayer, adapter_dtype, is_conv1d


class SVDLinear(TunerLayer):
    adapter_layer_names = ("lora_A", "lora_B", "lora_E", "lora_embedding_A", "lora_embedding_B")
    lora_A: Any
    lora_B: Any
    lora_E: Any
    ranknum: Any

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, r: int, lora_alpha: float, init_weights: bool
    ):
        super().__init__(base_layer)
        self.fan_in_fan_out = is_conv1d(base_layer)
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.lora_dropout = nn.ModuleDict({})
        self.lora_A = nn.ParameterDict({})
        self.lora_E = nn.ParameterDict({})
        self.lora_B = nn.ParameterDict({})
        self.lora_embedding_A = nn.ParameterDict({})  # kept empty: PEFT's AdaLoRA layer has them too
        self.lora_embedding_B = nn.ParameterDict({})
        self.ranknum = nn.ParameterDict({})
        self.update_layer(adapter_name, r, lora_alpha, init_weights)

    def per_adapter_settings(self) -> tuple[str, ...]:
        return ("r", "lora_alpha", "scaling", "lora_dropout", "ranknum")

    def update_layer(
        self, adapter_name: str, r: int, lora_alpha: float, init_weights: bool, ranknum: float | None = None
    ) -> None:
        """(Re)create the adapter at rank `r`; `ranknum` defaults to `r` (PEFT keeps init_r after a resize)."""
        if r < 0:
            raise ValueError(f"`r` should be a positive integer or 0, but the value passed is {r}")
        weight = self.base_layer.weight
        kw: dict[str, Any] = {"device": weight.device, "dtype": adapter_dtype(weight)}
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.lora_dropout[adapter_name] = nn.Identity()
        self.lora_A[adapter_name] = nn.Parameter(torch.randn(r, self.in_features, **kw))
        self.lora_E[adapter_name] = nn.Parameter(torch.randn(r, 1, **kw))
        self.lora_B[adapter_name] = nn.Parameter(torch.randn(self.out_features, r, **kw))
        self.ranknum[adapter_name] = nn.Parameter(
            torch.full((1,), float(r if ranknum is None else ranknum), **kw), requires_grad=False
        )
        # scaling is lora_alpha, or the rank at creation when lora_alpha == 0 (reference §7.2)
        self.scaling[adapter_name] = lora_alpha if lora_alpha > 0 else float(r)
        if init_weights:
            with torch.no_grad():
                nn.init.zeros_(self.lora_E[adapter_name])
                nn.init.normal_(self.lora_A[adapter_name], mean=0.0, std=0.02)
                nn.init.normal_(self.lora_B[adapter_name], mean=0.0, std=0.02)

    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_names, inference_mode)
        for p in self.ranknum.values():
            p.requires_grad_(False)  # ranknum is bookkeeping, never trained

    def shape_spec(self, container: str, adapter_name: str) -> tuple[tuple[str, int], ...]:
        r = self.r[adapter_name]
        if container == "lora_A":
            return (("r", r), ("in_features", self.in_features))
        if container == "lora_E":
            return (("r", r), ("vector", 1))
        return (("out_features", self.out_features), ("r", r))

    def effective_scale(self, adapter_name: str) -> float:
        """scaling / (ranknum + 1e-5): the factor in front of B·diag(E)·A."""
        return self.scaling[adapter_name] / (float(self.ranknum[adapter_name].item()) + 1e-5)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """ΔW in the base layer's layout."""
        delta = self.lora_B[adapter_name] @ (self.lora_A[adapter_name] * self.lora_E[adapter_name])
        delta = delta.T if self.fan_in_fan_out else delta
        return delta * self.scaling[adapter_name] / (self.ranknum[adapter_name] + 1e-5)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        bypassed = self.adapters_bypassed()  # first: a disabled merged layer unmerges before running
        result = self.base_layer(x, *args, **kwargs)
        if bypassed:
            return result
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            a, e, b = self.lora_A[name], self.lora_E[name], self.lora_B[name]
            xa = x.to(a.dtype)
            ranknum = self.ranknum[name] + 1e-5
            result = result + (xa @ (a * e).T @ b.T) * self.scaling[name] / ranknum
        return result

    def merge(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        self.refuse_quantized_merge("AdaLoRA")
        for name in self.adapters_to_merge(adapter_names):
            weight = self.base_layer.weight
            new_weight = weight.data + self.get_delta_weight(name).to(weight.dtype)
            new_weight = self.checked_merge(new_weight, name, safe_merge)
            weight.data = new_weight
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            weight = self.base_layer.weight
            weight.data -= self.get_delta_weight(name).to(weight.dtype)
