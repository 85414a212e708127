"""The shared base of tuners that inject layers into the model (LoRA, AdaLoRA, IA3): PEFT's `BaseTuner`.

`InjectionTuner(model, config, adapter_name)` walks `model.named_modules()`, matches HF paths with
`targeting.py` (reference §4), replaces each match by the method's `TunerLayer` (or adds the adapter to one
already there), wraps `modules_to_save`, and implements the `AdapterTuner` protocol around them. A method
subclass supplies only what differs: its layers (`create_layer` / `update_layer`), default targets, and
optional save/load key hooks.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from ..attr_forwarding import ForwardingModule
from ..config import AdapterConfig
from ..errors import AdapterConfigError, AdapterNotFoundError, NoTargetModulesError
from ..targeting import (
    is_excluded,
    is_under_modules_to_save,
    matches_target,
    minimal_target_modules,
    resolve_target_modules,
)
from .layer import TunerLayer, base_layer_dims
from .modules_to_save import ModulesToSaveWrapper, wrap_modules_to_save
from .state_io import adapter_state_dict, load_adapter_state, remove_adapter_name


class InjectionTuner(ForwardingModule):
    """Adapters injected as tuner layers into one transformers model (`self.model`, modified in place)."""

    # Missing attributes: the transformers model's
    _forward_to: ClassVar[str] = "model"

    default_targets: ClassVar[Mapping[str, list[str] | str]] = {}
    model: Any  # the transformers model (typed loosely: its methods vary by architecture)
    # PEFT condenses target lists of >= 20 entries into distinguishing suffixes before saving (not for IA3).
    minimize_targets: ClassVar[bool] = True

    def __init__(self, model: nn.Module, config: AdapterConfig, adapter_name: str = "default") -> None:
        super().__init__()
        self.model = model
        self.peft_config: dict[str, AdapterConfig] = {}
        self.active_adapter: str | None = adapter_name
        self.add_adapter(adapter_name, config)
        self.set_adapter(adapter_name)

    # -- what a method provides -----------------------------------------------------------------
    def create_layer(
        self, target: nn.Module, config: AdapterConfig, adapter_name: str, key: str
    ) -> TunerLayer:
        """A new tuner layer wrapping `target` (HF path `key`) with adapter `adapter_name`."""
        raise NotImplementedError

    def update_layer(self, layer: TunerLayer, config: AdapterConfig, adapter_name: str, key: str) -> None:
        """Add adapter `adapter_name` to an existing tuner layer of this method."""
        raise NotImplementedError

    def resolve_config(self, config: AdapterConfig) -> AdapterConfig:
        """A copy of `config` with null / "all-linear" targets resolved against the model (saved that way)."""
        targets = resolve_target_modules(
            self.model, getattr(config, "target_modules", None), self.default_targets, config.task_type
        )
        if self.minimize_targets and isinstance(targets, set):
            targets = minimal_target_modules(targets, [k for k, _ in self.model.named_modules()])
        return dataclasses.replace(config, target_modules=targets)  # type: ignore[call-arg]

    def checkpoint_key(self, live_key: str, adapter_name: str) -> str:
        """Saved key of a live key (both without the `base_model.model.` prefix)."""
        return remove_adapter_name(live_key, adapter_name)

    def extra_tensors_to_save(
        self, adapter_name: str, full: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {}

    def postprocess_saved_state(
        self, state: dict[str, torch.Tensor], adapter_name: str
    ) -> dict[str, torch.Tensor]:
        """Method hook on the live-keyed adapter tensors before the adapter name is removed."""
        return state

    def before_load(self, adapter_name: str, state: dict[str, torch.Tensor]) -> None:
        """Method hook run before a file's tensors are checked and copied (AdaLoRA resizes here)."""

    # -- walking the model ----------------------------------------------------------------------
    def tuner_layers(self) -> Iterator[tuple[str, TunerLayer]]:
        for name, module in self.model.named_modules():
            if isinstance(module, TunerLayer):
                yield name, module

    def wrappers(self) -> Iterator[tuple[str, ModulesToSaveWrapper]]:
        for name, module in self.model.named_modules():
            if isinstance(module, ModulesToSaveWrapper):
                yield name, module

    def _candidate_modules(self) -> list[tuple[str, nn.Module]]:
        """Modules that may be targeted: not the internals of tuner layers or modules_to_save wrappers."""
        out: list[tuple[str, nn.Module]] = []
        sealed: list[str] = []
        for key, module in self.model.named_modules():
            if not key or any(key.startswith(p + ".") for p in sealed):
                continue
            if isinstance(module, (TunerLayer, ModulesToSaveWrapper)):
                sealed.append(key)
            if not isinstance(module, ModulesToSaveWrapper):
                out.append((key, module))
        return out

    def _match(self, config: AdapterConfig) -> list[str]:
        """HF paths this config adapts, decided as PEFT's `inject_adapter` decides them.

        A list of `target_modules` may name modules the model lacks (one adapter config for several
        architectures); only an adapter that adapts nothing is an error, `NoTargetModulesError`, worded by why:
        everything matched was excluded, or nothing matched at all.
        """
        targets = getattr(config, "target_modules", None)
        layers_to_transform = getattr(config, "layers_to_transform", None)
        layers_pattern = getattr(config, "layers_pattern", None)
        modules_to_save = getattr(config, "modules_to_save", None)
        exclude = getattr(config, "exclude_modules", None)
        matched: list[str] = []
        excluded: list[str] = []
        for key, _ in self._candidate_modules():
            if is_excluded(key, exclude) or is_under_modules_to_save(key, modules_to_save):
                excluded.append(key)
            elif matches_target(
                key, targets, layers_to_transform=layers_to_transform, layers_pattern=layers_pattern
            ):
                matched.append(key)
        if not matched:
            raise NoTargetModulesError(self._no_match_message(config, excluded))
        if exclude and not any(is_excluded(k, exclude) for k in excluded):
            warnings.warn(
                f"You have passed exclude_modules={_show(exclude)} but no modules were excluded. "
                "Please check that exclude_modules was set correctly.",
                stacklevel=3,
            )
        for key in matched:
            module = self.model.get_submodule(key)
            if not isinstance(module, TunerLayer):
                base_layer_dims(module, key)  # raises UnsupportedError naming the module
        return matched

    def _no_match_message(self, config: AdapterConfig, excluded: list[str]) -> str:
        targets = getattr(config, "target_modules", None)
        layers_to_transform = getattr(config, "layers_to_transform", None)
        exclude = getattr(config, "exclude_modules", None)
        model_name = type(self.model).__name__
        detail = f"target_modules={_show(targets)}"
        if layers_to_transform is not None:
            detail += f", layers_to_transform={layers_to_transform}, layers_pattern={getattr(config, 'layers_pattern', None)!r}"
        if exclude:
            detail += f", exclude_modules={_show(exclude)}"
        would_match = [
            k
            for k in excluded
            if matches_target(
                k,
                targets,
                layers_to_transform=layers_to_transform,
                layers_pattern=getattr(config, "layers_pattern", None),
            )
        ]
        if would_match:
            return (
                f"{detail}: every module it matches in {model_name} is excluded by exclude_modules or lies inside "
                f"modules_to_save (e.g. {would_match[0]!r}); nothing would be adapted. Narrow exclude_modules / "
                "modules_to_save, or target other modules."
            )
        examples = [k for k, m in self._candidate_modules() if isinstance(m, nn.Linear)][:3]
        return (
            f"{detail} matched no module of {model_name}; nothing would be adapted. The adapter was made for "
            f"another architecture, or a name is misspelt: module names look like {examples} "
            "(see model.named_modules())."
        )

    # -- AdapterTuner protocol ------------------------------------------------------------------
    def add_adapter(self, adapter_name: str, config: AdapterConfig) -> None:
        """Inject adapter `adapter_name` (fresh PEFT-style init); it is not activated."""
        if adapter_name in self.peft_config:
            raise AdapterConfigError(f"an adapter named {adapter_name!r} already exists; pick another name.")
        if self.peft_config:
            first = next(iter(self.peft_config.values()))
            if first.peft_type != config.peft_type:
                raise AdapterConfigError(
                    f"cannot add a {config.peft_type} adapter next to {first.peft_type} adapters in one "
                    "AdapterModel (PEFT forbids it too); use MultiAdapterModel to serve mixed types."
                )
        config = self.resolve_config(config)
        matched = self._match(config)  # validates before the model is touched
        self.peft_config[adapter_name] = config
        for key in matched:
            target = self.model.get_submodule(key)
            if isinstance(target, TunerLayer):
                self.update_layer(target, config, adapter_name, key)
            else:
                parent_name, _, child = key.rpartition(".")
                parent = self.model.get_submodule(parent_name) if parent_name else self.model
                setattr(parent, child, self.create_layer(target, config, adapter_name, key))
        wrap_modules_to_save(self.model, getattr(config, "modules_to_save", None), adapter_name, True)
        self._refresh_active()

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise AdapterNotFoundError(
                f"no adapter named {adapter_name!r}; loaded: {sorted(self.peft_config)}."
            )
        del self.peft_config[adapter_name]
        for _, layer in self.tuner_layers():
            layer.delete_adapter(adapter_name)
        for _, wrapper in self.wrappers():
            wrapper.delete_adapter(adapter_name)
        if self.active_adapter == adapter_name:
            self.active_adapter = next(iter(self.peft_config), None)
        self._refresh_active()

    def set_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise AdapterNotFoundError(
                f"no adapter named {adapter_name!r}; loaded: {sorted(self.peft_config)}."
            )
        self.active_adapter = adapter_name
        self._refresh_active()

    def enable_adapters(self, enabled: bool) -> None:
        for _, layer in self.tuner_layers():
            layer.enable_adapters(enabled)
        for _, wrapper in self.wrappers():
            wrapper.enable_adapters(enabled)

    def _refresh_active(self) -> None:
        """Point every layer at the active adapter and set `requires_grad` exactly as PEFT does.

        PEFT quirk kept for equal parameter counts: `bias="all"/"lora_only"` biases are marked trainable even
        for an adapter loaded for inference (PEFT only freezes parameters carrying the adapter's name).
        """
        name = self.active_adapter
        config = self.peft_config.get(name) if name is not None else None
        inference = True if config is None else config.inference_mode
        for p in self.model.parameters():
            p.requires_grad_(False)
        for _, layer in self.tuner_layers():
            layer.set_adapter([name] if name is not None else [], inference_mode=inference)
        bias = getattr(config, "bias", "none") if config is not None else "none"
        if bias == "all":
            for n, p in self.model.named_parameters():
                if n == "bias" or n.endswith(".bias"):
                    p.requires_grad_(True)
        elif bias == "lora_only":
            for _, layer in self.tuner_layers():
                if layer.bias is not None:
                    layer.bias.requires_grad_(True)
        for _, wrapper in self.wrappers():  # last: freezes the originals a bias rule may have unfrozen
            wrapper.set_adapter(name, inference_mode=inference)

    def state_dict_to_save(self, adapter_name: str) -> dict[str, torch.Tensor]:
        if adapter_name not in self.peft_config:
            raise AdapterNotFoundError(
                f"no adapter named {adapter_name!r}; loaded: {sorted(self.peft_config)}."
            )
        return adapter_state_dict(self, adapter_name)

    def load_state_dict_from_file(self, adapter_name: str, state: dict[str, torch.Tensor]) -> None:
        load_adapter_state(self, adapter_name, state, source=f"adapter {adapter_name!r}")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.generate(*args, **kwargs)

    # -- merging (optional capability of the protocol) --------------------------------------------
    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        """Fold the active adapter (or `adapter_names`) into the base weights; forward then skips it."""
        names = (
            adapter_names
            if adapter_names is not None
            else [self.active_adapter]
            if self.active_adapter
            else []
        )
        for _, layer in self.tuner_layers():
            layer.merge(names, safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        for _, layer in self.tuner_layers():
            if layer.merged:
                layer.unmerge()

    def _unload(
        self,
        merge: bool,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
        originals: bool = False,
    ) -> nn.Module:
        if merge:
            self.merge_adapter(adapter_names, safe_merge=safe_merge)
        for key, module in list(self.model.named_modules()):
            if isinstance(module, (TunerLayer, ModulesToSaveWrapper)):
                if isinstance(module, TunerLayer):
                    replacement = module.base_layer
                else:
                    replacement = module.original_module if originals else module.active_module
                parent_name, _, child = key.rpartition(".")
                parent = self.model.get_submodule(parent_name) if parent_name else self.model
                setattr(parent, child, replacement)
        self.peft_config.clear()
        self.active_adapter = None
        return self.model

    def merge_and_unload(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> nn.Module:
        """Merge, then return the plain transformers model (modified in place; use the return value)."""
        return self._unload(True, safe_merge, adapter_names)

    def unload(self) -> nn.Module:
        """Return the plain transformers model without merging (the adapters are dropped)."""
        return self._unload(False)

    def restore_base_model(self) -> nn.Module:
        """Take every layer and wrapper out again, originals back in place (used after a failed load)."""
        return self._unload(False, originals=True)


def _show(targets: object) -> str:
    if isinstance(targets, (set, frozenset)):
        return repr(sorted(targets))
    return repr(targets)
