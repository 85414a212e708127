"""DoRA: weight-decomposed LoRA (reference §5.5).

The magnitude `m` lives in `lora_magnitude_vector[name].weight` (PEFT's live layout; saved without `.weight`).
The norm `n` of the adapted weight is recomputed every forward and treated as a constant.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...tuners.quantized import dequantized_weight


def _transpose(weight: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    return weight.T if fan_in_fan_out else weight


class DoraLinearLayer(nn.Module):
    """Magnitude vector `m` (out,) of one adapter on a Linear/Conv1D layer."""

    def __init__(self, fan_in_fan_out: bool) -> None:
        super().__init__()
        self.fan_in_fan_out = fan_in_fan_out
        self.weight: nn.Parameter = nn.Parameter(torch.empty(0))
        self._merge_norms: dict[str, torch.Tensor] = {}  # n at merge time, needed to unmerge exactly

    @staticmethod
    def row_norm(weight_rows: torch.Tensor, delta_rows: torch.Tensor) -> torch.Tensor:
        """n = ||W + ΔW|| over dim 1; both (out, in). Returns (out,)."""
        return torch.linalg.norm(weight_rows + delta_rows, dim=1).to(weight_rows.dtype)

    def init_magnitude(self, weight_rows: torch.Tensor, delta_rows: torch.Tensor) -> None:
        """m starts as the norm of the adapted weight, so a fresh DoRA adapter is the identity."""
        with torch.no_grad():
            norm = self.row_norm(weight_rows.to(delta_rows.dtype), delta_rows)
        self.weight = nn.Parameter(norm.detach().clone())

    def forward(
        self,
        x: torch.Tensor,
        *,
        lora_a: nn.Linear,
        lora_b: nn.Linear,
        scaling: float,
        base_layer: Any,
        base_result: torch.Tensor,
    ) -> torch.Tensor:
        """The DoRA term added to `base_result` = base(x): (m/n - 1) ⊙ (base(x) - b) + (m/n) ⊙ scaling·B A x."""
        lora_weight = (lora_b.weight @ lora_a.weight).to(x.dtype)  # (out, in)
        weight_rows = _transpose(dequantized_weight(base_layer), self.fan_in_fan_out).to(x.dtype)
        norm = self.row_norm(weight_rows, scaling * lora_weight.detach()).detach()
        mag_norm_scale = (self.weight / norm).view(1, -1)
        lora_result = lora_b(lora_a(x))
        bias = getattr(base_layer, "bias", None)
        if bias is not None:
            base_result = base_result - bias
        return (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling

    def merged_weight(self, weight: torch.Tensor, delta: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """W' = (m/n) ⊙ (W + ΔW) in the base layer's layout; remembers n for `unmerged_weight`."""
        norm = self.row_norm(
            _transpose(weight, self.fan_in_fan_out), _transpose(delta, self.fan_in_fan_out)
        ).detach()
        self._merge_norms[adapter_name] = norm
        factor = _transpose((self.weight / norm).view(-1, 1), self.fan_in_fan_out)
        return (factor * (weight + delta)).to(weight.dtype)

    def unmerged_weight(self, weight: torch.Tensor, delta: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """W = W'/(m/n) − ΔW with the n cached at merge time."""
        norm = self._merge_norms.pop(adapter_name)
        factor = _transpose((self.weight / norm).view(-1, 1), self.fan_in_fan_out)
        return (weight / factor - delta).to(weight.dtype)
