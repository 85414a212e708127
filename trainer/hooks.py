"""Method-specific training steps. Only AdaLoRA has any; every other method trains with the plain loop.

AdaLoRA (PEFT's `AdaLoraModel`) adds two things to training:
* an orthogonality regulariser on P (lora_A) and Q (lora_B), `orth_reg_weight · mean ‖PPᵀ − I‖_F`, which
  PEFT adds to `outputs.loss` inside its forward. The trainer computes its own loss from the logits, so it
  adds the same term here;
* the rank-budget schedule: `update_and_allocate(step)` after every optimizer step (it reads the
  gradients, so before `zero_grad`). It lives in adapters_core's AdaLoRA tuner, as in PEFT.

For resuming, the schedule's state (the rank pattern in the config and the allocator's importance EMAs)
is saved with each checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from adapters_core import PeftType

from .loop import MethodHooks

ADAPTER = "default"


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _find_with(model: nn.Module, attr: str) -> Any | None:
    """The object (AdapterModel or its tuner) that has `attr`, as PEFT's `model.base_model.<attr>`."""
    for obj in (model, getattr(model, "base_model", None), getattr(model, "tuner", None)):
        if obj is not None and getattr(obj, attr, None) is not None:
            return obj
    return None


class AdaLoraHooks:
    """Orthogonality loss, budget schedule and its checkpoint state for one AdaLoRA adapter."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        tuner = _find_with(model, "update_and_allocate")
        if tuner is None:
            raise TypeError("AdaLoRA training needs an adapters_core AdaLoRA model (update_and_allocate).")
        self.tuner: Any = tuner
        self.config: Any = model.peft_config[ADAPTER]  # type: ignore[index]

    def loop_hooks(self) -> MethodHooks:
        return MethodHooks(extra_loss=self.orthogonal_loss, after_optimizer_step=self.update)

    def orthogonal_loss(self, model: nn.Module) -> torch.Tensor | None:
        """The tuner's regulariser (the same term PEFT adds to `outputs.loss` in its forward)."""
        return self.tuner.orthogonal_loss()

    def update(self, model: nn.Module, step: int) -> None:
        self.tuner.update_and_allocate(step)

    def state_dict(self) -> dict[str, Any]:
        allocator = getattr(self.tuner, "rankallocator", None)
        state: dict[str, Any] = {"rank_pattern": _plain(getattr(self.config, "rank_pattern", None))}
        if allocator is not None:
            state.update(allocator.state_dict())  # the importance EMAs: ipt, exp_avg_ipt, exp_avg_unc
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The masked singular values themselves come back with the trainable parameters.
        if state.get("rank_pattern") is not None:
            self.config.rank_pattern = state["rank_pattern"]
        allocator = getattr(self.tuner, "rankallocator", None)
        if allocator is not None:
            device = next(_unwrap(self.model).parameters()).device  # the checkpoint holds CPU copies
            allocator.load_state_dict(state, device=device)


class NoHooks:
    """Every method but AdaLoRA: nothing beyond the plain loop."""

    def loop_hooks(self) -> MethodHooks:
        return MethodHooks()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def method_hooks(model: nn.Module) -> AdaLoraHooks | NoHooks:
    """AdaLoRA's hooks when the adapter is AdaLoRA (whatever `--method` name chose it), else none."""
    config: Any = getattr(model, "peft_config", {}).get(ADAPTER)
    is_adalora = config is not None and config.peft_type == PeftType.ADALORA
    return AdaLoraHooks(model) if is_adalora else NoHooks()


def _plain(value: Any) -> Any:
    """Rank patterns as lists of bools (torch.load(weights_only=True) reads those back)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value
