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

import warnings
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .loop import MethodHooks

ADAPTER = "default"
_ALLOCATOR_DICTS = ("ipt", "exp_avg_ipt", "exp_avg_unc")


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
        self.tuner = _find_with(model, "update_and_allocate")
        if self.tuner is None:
            # adapters_core's AdaLoRA serves and saves AdaLoRA adapters but has no budget allocator (yet):
            # train at init_r with the orthogonality loss; the saved file has rank_pattern null, as PEFT
            # writes before its allocator first runs, so PEFT loads it unchanged.
            warnings.warn(
                "adapters_core's AdaLoRA has no update_and_allocate(); training without the rank-budget "
                "schedule (every module keeps init_r).",
                stacklevel=2,
            )
        self.config: Any = model.peft_config[ADAPTER]  # type: ignore[index]

    def loop_hooks(self) -> MethodHooks:
        return MethodHooks(extra_loss=self.orthogonal_loss, after_optimizer_step=self.update)

    def orthogonal_loss(self, model: nn.Module) -> torch.Tensor | None:
        weight = float(getattr(self.config, "orth_reg_weight", 0.0))
        if weight <= 0:
            return None
        total: torch.Tensor | None = None
        count = 0
        for name, p in _unwrap(model).named_parameters():
            if not (("lora_A" in name or "lora_B" in name) and ADAPTER in name) or p.numel() == 0:
                continue
            cov = p @ p.T if "lora_A" in name else p.T @ p  # (r, r)
            eye = torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)
            term = torch.linalg.matrix_norm(cov - eye, ord="fro")
            total = term if total is None else total + term
            count += 1
        return None if total is None else weight * total / count

    def update(self, model: nn.Module, step: int) -> None:
        if self.tuner is not None:
            self.tuner.update_and_allocate(step)

    def state_dict(self) -> dict[str, Any]:
        allocator = getattr(self.tuner, "rankallocator", None) if self.tuner is not None else None
        state: dict[str, Any] = {"rank_pattern": _plain(getattr(self.config, "rank_pattern", None))}
        if allocator is not None:
            for key in _ALLOCATOR_DICTS:
                state[key] = {k: v.detach().cpu().clone() for k, v in getattr(allocator, key, {}).items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The masked singular values themselves come back with the trainable parameters.
        if state.get("rank_pattern") is not None:
            self.config.rank_pattern = state["rank_pattern"]
        allocator = getattr(self.tuner, "rankallocator", None) if self.tuner is not None else None
        if allocator is not None:
            for key in _ALLOCATOR_DICTS:
                if key in state:
                    setattr(allocator, key, dict(state[key]))


class NoHooks:
    """Every method but AdaLoRA: nothing beyond the plain loop."""

    def loop_hooks(self) -> MethodHooks:
        return MethodHooks()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def method_hooks(method: str, model: nn.Module) -> AdaLoraHooks | NoHooks:
    return AdaLoraHooks(model) if method == "adalora" else NoHooks()


def _plain(value: Any) -> Any:
    """Rank patterns as lists of bools (torch.load(weights_only=True) reads those back)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value
