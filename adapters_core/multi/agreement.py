"""A LoRA / AdaLoRA / IA3 file's tensors and its config must describe the same modules.

PEFT decides which modules a config targets (reference §4, `targeting.py`): a target list that matches
nothing is an error. PEFT itself then loads a state dict leniently — tensors of modules the config does not
target are dropped without a word, and a targeted module without tensors keeps its fresh initialisation
after a "Found missing adapter keys" warning. A server cannot serve either case honestly (the first ignores
or, worse, applies weights the config disowns; the second serves part of an adapter), so here both are
errors naming the modules:

* every module with adapter tensors in the file is one the config targets, and
* every module the config targets in this base has its tensors.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..config import AdapterConfig
from ..errors import AdapterWeightsError, NoTargetModulesError, UnsupportedError
from ..methods.adalora.config import AdaLoraConfig
from ..methods.ia3.config import IA3Config
from ..peft_names import INJECTED_PREFIX
from ..targeting import (
    IA3_DEFAULT_TARGETS,
    LORA_DEFAULT_TARGETS,
    is_excluded,
    is_linear_like,
    is_under_modules_to_save,
    matches_target,
    resolve_target_modules,
)

# Tensor-name endings that mark a module as adapted, per method (the module path is what precedes them).
LORA_KEYS = (
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora_B.bias",
    ".lora_embedding_A",
    ".lora_embedding_B",
    ".lora_magnitude_vector",
)
ADALORA_KEYS = (".lora_A", ".lora_E", ".lora_B")
IA3_KEYS = (".ia3_l",)
_SHOWN = 6  # module names listed in a message before "and N more"


class _BaseView:
    """The base model as `targeting.py` sees it, from the module dict taken before any wrapping: the
    serving model's own layers (MultiLinear, ...) must not change which modules PEFT's rules select."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self._modules = modules
        self._root = modules[""]
        self.config = getattr(self._root, "config", None)

    def named_modules(self) -> Iterator[tuple[str, nn.Module]]:
        return iter(self._modules.items())

    def get_output_embeddings(self) -> nn.Module | None:
        get = getattr(self._root, "get_output_embeddings", None)
        out = get() if callable(get) else None
        return getattr(out, "base_layer", out)  # a wrapped output layer stands for its base layer


def _show(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _adaptable(module: nn.Module, config: AdapterConfig) -> bool:
    if isinstance(config, IA3Config):
        return is_linear_like(module)
    return is_linear_like(module) or isinstance(module, nn.Embedding)


def targeted_modules(config: AdapterConfig, modules: Mapping[str, nn.Module]) -> list[str]:
    """HF paths of `modules` that `config` adapts by PEFT's rules; `NoTargetModulesError` if none, and
    `UnsupportedError` for a matched module the serving form has no layer for (a convolution, say)."""
    defaults = IA3_DEFAULT_TARGETS if isinstance(config, IA3Config) else LORA_DEFAULT_TARGETS
    raw: Any = getattr(config, "target_modules", None)
    targets = resolve_target_modules(_BaseView(modules), raw, defaults, config.task_type)  # type: ignore[arg-type]
    keep_out = getattr(config, "modules_to_save", None)
    exclude = getattr(config, "exclude_modules", None)
    layers = getattr(config, "layers_to_transform", None)
    pattern = getattr(config, "layers_pattern", None)
    matched = [
        path
        for path in modules
        if path
        and not is_under_modules_to_save(path, keep_out)
        and not is_excluded(path, exclude)
        and matches_target(path, targets, layers_to_transform=layers, layers_pattern=pattern)
    ]
    if not matched:
        shown = sorted(targets) if isinstance(targets, set) else targets
        raise NoTargetModulesError(
            f"target_modules={shown!r} matches no module of this base model "
            f"({type(modules['']).__name__}), so nothing would be adapted; PEFT refuses such a config too. "
            "Name the modules the adapter was trained on (e.g. ['q_proj', 'v_proj'])."
        )
    for path in matched:
        if not _adaptable(modules[path], config):
            raise UnsupportedError(
                f"{path}: adapters on a {type(modules[path]).__name__} are not supported in a mixed batch "
                "(the serving form's layers take nn.Linear, Conv1D and nn.Embedding); serve it "
                "with AdapterModel, or target the model's Linear layers."
            )
    return matched


def module_paths(state: Mapping[str, torch.Tensor], config: AdapterConfig) -> set[str]:
    """HF paths of the modules that carry adapter tensors in a PEFT state dict."""
    endings: tuple[str, ...]
    if isinstance(config, AdaLoraConfig):
        endings = ADALORA_KEYS
    elif isinstance(config, IA3Config):
        endings = IA3_KEYS
    else:
        endings = LORA_KEYS
    paths = set()
    for key in state:
        ending = next((e for e in endings if key.endswith(e)), None)
        if ending is not None:
            paths.add(key.removeprefix(INJECTED_PREFIX).removesuffix(ending))
    return paths


def check_agreement(
    config: AdapterConfig, state: Mapping[str, torch.Tensor], modules: Mapping[str, nn.Module]
) -> None:
    """Raise unless the file's adapted modules are exactly the modules `config` targets in this base.

    A path the base lacks altogether means a file made for another architecture (`NoTargetModulesError`).
    """
    in_file = module_paths(state, config)
    unknown = sorted(p for p in in_file if p not in modules)
    if unknown:
        raise NoTargetModulesError(
            f"the base model has no module {_show(unknown)}; the adapter was trained for another architecture."
        )
    targeted = set(targeted_modules(config, modules))
    stray = sorted(in_file - targeted)
    if stray:
        raise AdapterWeightsError(
            f"the file has {config.peft_type} tensors for module(s) the config does not target: {_show(stray)} "
            f"(target_modules={getattr(config, 'target_modules', None)!r}); PEFT would silently drop them. "
            "Fix target_modules (or the exclusions) to the modules the adapter was trained on."
        )
    missing = sorted(targeted - in_file)
    if missing:
        raise AdapterWeightsError(
            f"the config targets module(s) with no tensors in the file: {_show(missing)}; serving the rest "
            "would be a partial adapter. Re-save the adapter, or narrow target_modules to the modules it has."
        )
