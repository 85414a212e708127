"""The interface between `AdapterModel` and one adapter method's live form (PEFT's tuner / prompt encoder).

Every method package registers a `MethodSpec` (adapters_core/registry.py) whose `tuner_cls` implements
`AdapterTuner`. `AdapterModel` owns no method-specific logic: it resolves files, checks configs, and calls
these methods. Keys in `state_dict_to_save` / `load_state_dict` are exactly the keys of PEFT's
`adapter_model.safetensors` (reference §3), so saving and loading is a plain file write/read around them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..config import AdapterConfig


@runtime_checkable
class AdapterTuner(Protocol):
    """One method's adapters over one transformers model.

    Constructed as `tuner_cls(model, config, adapter_name)`: wraps or injects into `model` (in place, like
    PEFT) and adds a first adapter `adapter_name` with fresh weights initialised as PEFT initialises them.
    The tuner is an `nn.Module`; its `named_parameters()` holds the base model's parameters once plus every
    adapter's, so parameter counts come out as PEFT's.
    """

    model: nn.Module  # the wrapped transformers model
    peft_config: dict[str, AdapterConfig]  # adapter name -> config
    active_adapter: str | None  # None only while disabled

    def add_adapter(self, adapter_name: str, config: AdapterConfig) -> None:
        """Add a new adapter with fresh weights (PEFT's init), not active until `set_adapter`."""

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter and free its parameters."""

    def set_adapter(self, adapter_name: str) -> None:
        """Make `adapter_name` the one applied in `forward`."""

    def enable_adapters(self, enabled: bool) -> None:
        """Turn every adapter off (base model behaviour, modulo PEFT's persisted biases) or back on."""

    def state_dict_to_save(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """The adapter's tensors under PEFT's saved keys (what `adapter_model.safetensors` holds)."""

    def load_state_dict_from_file(self, adapter_name: str, state: dict[str, torch.Tensor]) -> None:
        """Load PEFT-keyed tensors into the adapter `adapter_name` (already added with its config).

        Raises `AdapterShapeError` naming the module when a tensor does not fit, `AdapterWeightsError`
        for a key the config does not explain, `NoTargetModulesError` if nothing matched.
        """

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The transformers model's forward with the active adapter applied."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """nn.Module's call (hooks, then `forward`)."""

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """`model.generate` with the active adapter applied, forward-consistent (reference §14)."""


# -- optional capabilities: AdapterModel checks for them and raises UnsupportedError when absent --------------


@runtime_checkable
class MergeableTuner(Protocol):
    """A method whose adapters can be folded into the base weights (LoRA, AdaLoRA, IA3)."""

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        """Fold the active adapter (or `adapter_names`) into the base weights; forward then skips it."""

    def unmerge_adapter(self) -> None:
        """Undo every merge (exact for LoRA, up to rounding for DoRA and IA3)."""

    def merge_and_unload(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> nn.Module:
        """Merge, then return the plain transformers model (adapter layers replaced by their base layers)."""

    def unload(self) -> nn.Module:
        """Return the plain transformers model without merging."""


@runtime_checkable
class WeightedAdapterTuner(Protocol):
    """A method that can combine adapters into a new one (LoRA: linear/cat/svd; IA3: linear)."""

    def add_weighted_adapter(
        self, adapters: list[str], weights: list[float], adapter_name: str, **options: Any
    ) -> None:
        """Add `adapter_name` combining `adapters` with `weights`; it is not activated."""


@runtime_checkable
class RestorableTuner(Protocol):
    """A method that can take itself out of the model after a failed load (nothing was written yet)."""

    def restore_base_model(self) -> nn.Module:
        """Put the original modules back (no merge, no trained copies) and return the model."""
