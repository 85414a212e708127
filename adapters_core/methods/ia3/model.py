"""The IA³ tuner (PEFT's `IA3Model`)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ...config import AdapterConfig
from ...errors import AdapterConfigError, AdapterNotFoundError, UnsupportedError
from ...targeting import IA3_DEFAULT_FEEDFORWARD, IA3_DEFAULT_TARGETS, is_feedforward, resolve_target_modules
from ...tuners.injection import InjectionTuner
from ...tuners.layer import TunerLayer, is_conv1d
from .config import IA3Config
from .layer import Linear


class IA3Tuner(InjectionTuner):
    default_targets = IA3_DEFAULT_TARGETS
    minimize_targets = False  # PEFT keeps IA3's list whole (feedforward_modules must stay a subset)

    def resolve_config(self, config: AdapterConfig) -> AdapterConfig:
        resolved = super().resolve_config(config)
        assert isinstance(resolved, IA3Config)
        if resolved.feedforward_modules is None:
            feedforward = resolve_target_modules(self.model, None, IA3_DEFAULT_FEEDFORWARD, config.task_type)
            resolved = dataclasses.replace(resolved, feedforward_modules=feedforward)
        return resolved

    def create_layer(self, target: nn.Module, config, adapter_name: str, key: str) -> TunerLayer:
        if not (isinstance(target, nn.Linear) or is_conv1d(target)):
            raise UnsupportedError(
                f"{key}: IA3 cannot target a {type(target).__name__}; Swapyard supports nn.Linear and Conv1D."
            )
        if config.fan_in_fan_out != is_conv1d(target):
            config.fan_in_fan_out = is_conv1d(target)  # PEFT corrects the flag (and the saved config)
        feedforward = is_feedforward(key, config.feedforward_modules)
        return Linear(target, adapter_name, feedforward, config.init_ia3_weights)

    def update_layer(self, layer: TunerLayer, config, adapter_name: str, key: str) -> None:
        if not isinstance(layer, Linear):
            raise UnsupportedError(f"{key}: already adapted by another method ({type(layer).__name__}).")
        layer.update_layer(adapter_name, config.init_ia3_weights)

    def add_weighted_adapter(
        self, adapters: list[str], weights: list[float], adapter_name: str, combination_type: str = "linear"
    ) -> None:
        """A new adapter with `l_new = Σ w_i · l_i` per module (reference §6.3); not activated."""
        if combination_type != "linear":
            raise UnsupportedError(
                f"IA3 combines adapters linearly only; combination_type={combination_type!r} is not available."
            )
        if adapter_name in self.peft_config:
            raise AdapterConfigError(f"an adapter named {adapter_name!r} already exists; pick another name.")
        for a in adapters:
            if a not in self.peft_config:
                raise AdapterNotFoundError(f"no adapter named {a!r}; loaded: {sorted(self.peft_config)}.")
        if len(adapters) != len(weights):
            raise AdapterConfigError(f"got {len(adapters)} adapters but {len(weights)} weights.")
        configs = [self.peft_config[a] for a in adapters]
        config = dataclasses.replace(  # type: ignore[call-arg]
            configs[0],
            target_modules=_union([getattr(c, "target_modules", None) for c in configs], "target_modules"),
            feedforward_modules=_union(
                [getattr(c, "feedforward_modules", None) for c in configs], "feedforward_modules"
            ),
        )
        self.add_adapter(adapter_name, config)
        with torch.no_grad():
            for _, layer in self.tuner_layers():
                if not isinstance(layer, Linear) or adapter_name not in layer.ia3_l:
                    continue
                new = layer.ia3_l[adapter_name]
                new.zero_()
                for a, w in zip(adapters, weights):
                    if a in layer.ia3_l:
                        new += w * layer.ia3_l[a]


def _union(values: list, field: str) -> object:
    if all(isinstance(v, str) for v in values):
        return "|".join(f"({v})" for v in values)
    if all(isinstance(v, (set, list)) for v in values):
        return set().union(*values)
    raise AdapterConfigError(f"cannot combine adapters whose {field} mix lists and regex strings.")
