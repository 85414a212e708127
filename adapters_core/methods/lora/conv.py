"""LoRA over `nn.Conv1d`, `nn.Conv2d` and `nn.Conv3d` (PEFT's `_ConvNd`; SegFormer heads, diffusers UNets).

Live layout, as PEFT's: `lora_A[name]` is a conv of the base's type `in → r` with the base's kernel size, stride,
padding and dilation (PEFT 0.21 drops the dilation and then fails on shape for any dilated k > 1 conv, so no
PEFT file can depend on it; its zero padding is kept whatever the base's padding_mode, as PEFT does);
`lora_B[name]` is a 1×…×1 conv `r → out` with the base's `groups`. Saved keys are `….lora_A.weight` (r, in, *kernel) and `….lora_B.weight`
(out, r / groups, 1, …).

Forward (eval), x: (B, in, *spatial) → y: (B, out, *spatial'):
    y = base(x) + scaling · B(A(x))
Merge: W (out, in, *kernel) += scaling · ΔW with ΔW = B·A for a 1×…×1 kernel, else conv(Aᵀ, B)ᵀ (the
composition of the two convs as one kernel). Not defined for groups > 1 (PEFT refuses too).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedError
from ...tuners.layer import adapter_dtype
from .config import LoraConfig
from .layer import LoraLayer

_CONV_FN = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}  # by the base weight's number of dimensions


class Conv(LoraLayer):
    """LoRA over an `nn.Conv1d/2d/3d` (the kernel rank picks the conv function)."""

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, r: int, lora_alpha: float
    ):
        super().__init__(base_layer)
        self.fan_in_fan_out = False
        self.update_layer(adapter_name, r, lora_alpha, config)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config: LoraConfig) -> None:
        base = self.base_layer
        if config.use_dora:
            raise UnsupportedError(
                f"DoRA on a {type(base).__name__} is not supported by Swapyard; set use_dora=false or target only "
                "Linear layers."
            )
        if r % base.groups != 0:
            raise ValueError(
                f"Targeting a {type(base).__name__} with groups={base.groups} and rank {r}: the rank must be "
                "divisible by groups (as in PEFT). Choose another rank or do not target this layer."
            )
        self._set_common(adapter_name, r, lora_alpha, config)
        conv = type(base)
        ones = (1,) * (base.weight.dim() - 2)
        kw: dict[str, Any] = {"device": base.weight.device, "dtype": adapter_dtype(base.weight)}
        self.lora_A[adapter_name] = conv(
            self.in_features, r, base.kernel_size, base.stride, base.padding, base.dilation, bias=False, **kw
        )
        self.lora_B[adapter_name] = conv(
            r, self.out_features, ones, ones, groups=base.groups, bias=config.lora_bias, **kw
        )
        self._init_weights(adapter_name, config.init_lora_weights)

    def shape_spec(self, container: str, adapter_name: str) -> tuple[tuple[str, int], ...]:
        r = self.r[adapter_name]
        kernel = tuple(("kernel", k) for k in self.base_layer.kernel_size)
        if container == "lora_A":
            return (("r", r), ("in_channels", self.in_features), *kernel)
        ones = tuple(("kernel", 1) for _ in kernel)
        return (("out_channels", self.out_features), ("r", r // self.base_layer.groups), *ones)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """ΔW (out, in, *kernel), scaled; computed in fp32 on CPU for half adapters (as PEFT)."""
        a = self.lora_A[adapter_name].weight  # (r, in, *kernel)
        b = self.lora_B[adapter_name].weight  # (out, r, 1, ...)
        half = a.device.type == "cpu" and a.dtype in (torch.float16, torch.bfloat16)
        wa, wb = (a.float(), b.float()) if half else (a, b)
        if all(k == 1 for k in self.base_layer.kernel_size):
            delta = (wb.flatten(1) @ wa.flatten(1)).view(wb.shape[0], wa.shape[1], *wa.shape[2:])
        else:
            delta = _CONV_FN[a.dim()](wa.transpose(0, 1), wb).transpose(0, 1)
        delta = delta * self.scaling[adapter_name]
        return delta.to(a.dtype) if half else delta

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        bypassed = self.adapters_bypassed()
        result = self.base_layer(x, *args, **kwargs)
        if bypassed:
            return result
        result_dtype = result.dtype
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_a, lora_b = self.lora_A[name], self.lora_B[name]
            xa = self.lora_dropout[name](x.to(lora_a.weight.dtype))
            result = result + lora_b(lora_a(xa)) * self.scaling[name]
        return result.to(result_dtype)

    def merge(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        for name in self.adapters_to_merge(adapter_names):
            if name not in self.lora_A:
                continue
            base = self.base_layer
            if base.groups > 1:
                raise NotImplementedError("Merging is not supported for _ConvNd layers with groups > 1!")
            weight = base.weight
            new_weight = self.checked_merge(
                weight.data + self.get_delta_weight(name).to(weight.dtype), name, safe_merge
            )
            new_bias = self._merged_bias(name)
            if new_bias is not None:
                new_bias = self.checked_merge(new_bias, name, safe_merge)
            weight.data = new_weight
            self._write_bias(new_bias)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name not in self.lora_A:
                continue
            weight = self.base_layer.weight
            weight.data -= self.get_delta_weight(name).to(weight.dtype)
            self._unmerge_bias(name)
