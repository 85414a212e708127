"""`modules_to_save`: whole modules (classification heads, `lm_head`) trained and saved with an adapter.

The wrapper keeps the untouched `original_module` and one trained copy per adapter in
`modules_to_save[<adapter>]`, exactly PEFT's `ModulesToSaveWrapper` layout, so live parameter names are
PEFT's and a saved key is the wrapped module's own key (`base_model.model.classifier.weight`; reference §3.2).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from torch import nn


class ModulesToSaveWrapper(nn.Module):
    """Forward through the active adapter's copy; the original when disabled or the adapter has no copy."""

    def __init__(self, module_to_save: nn.Module, adapter_name: str) -> None:
        super().__init__()
        self.original_module = module_to_save
        self.modules_to_save = nn.ModuleDict({})
        self.active_adapter: str | None = None
        self.disable_adapters = False
        self.update(adapter_name)

    def update(self, adapter_name: str, inference_mode: bool = False) -> None:
        """Add a trained copy for `adapter_name` (a deep copy of the original, as PEFT does)."""
        if adapter_name not in self.modules_to_save:
            self.modules_to_save[adapter_name] = copy.deepcopy(self.original_module)
        self.original_module.requires_grad_(False)
        self.modules_to_save[adapter_name].requires_grad_(not inference_mode)

    def set_adapter(self, adapter_name: str | None, inference_mode: bool = False) -> None:
        """Activate `adapter_name`'s copy (None or an adapter without a copy means the original module)."""
        self.original_module.requires_grad_(False)
        for name, module in self.modules_to_save.items():
            module.requires_grad_(name == adapter_name and not inference_mode)
        self.active_adapter = (
            adapter_name if adapter_name is not None and adapter_name in self.modules_to_save else None
        )

    def enable_adapters(self, enabled: bool) -> None:
        self.disable_adapters = not enabled

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.modules_to_save:
            del self.modules_to_save[adapter_name]
        if self.active_adapter == adapter_name:
            self.active_adapter = None

    @property
    def active_module(self) -> nn.Module:
        if self.disable_adapters or self.active_adapter is None:
            return self.original_module
        return self.modules_to_save[self.active_adapter]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.active_module(*args, **kwargs)

    # transformers code reads attributes of heads (e.g. `lm_head.weight` for tying): forward them.
    @property
    def weight(self) -> Any:
        return self.active_module.weight

    @property
    def bias(self) -> Any:
        return getattr(self.active_module, "bias", None)


def matches_modules_to_save(key: str, names: Iterable[str]) -> bool:
    """PEFT's `_set_trainable` matching: a plain `key.endswith(name)` with no dot boundary (reference §4)."""
    return any(key.endswith(n) for n in names)


def wrap_modules_to_save(
    model: nn.Module, names: Iterable[str] | None, adapter_name: str, inference_mode: bool = False
) -> list[str]:
    """Wrap (or extend) every module whose path ends with one of `names`; returns the wrapped paths."""
    names = list(names or ())
    if not names:
        return []
    wrapped: list[str] = []
    inside: list[str] = []
    for key, module in list(model.named_modules(remove_duplicate=False)):
        if not key or any(key.startswith(p + ".") for p in inside):
            continue
        if isinstance(module, ModulesToSaveWrapper):
            inside.append(key)
            if matches_modules_to_save(key, names):
                module.update(adapter_name, inference_mode)
                wrapped.append(key)
            continue
        if not matches_modules_to_save(key, names):
            continue
        parent_name, _, child_name = key.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapper = ModulesToSaveWrapper(module, adapter_name)
        wrapper.update(adapter_name, inference_mode)
        setattr(parent, child_name, wrapper)
        inside.append(key)
        wrapped.append(key)
    return wrapped
