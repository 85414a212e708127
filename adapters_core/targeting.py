"""Which modules of a transformers model an adapter targets (reference §4 and §5.3).

Pure functions over HF module paths (`model.named_modules()` names, no `base_model.model.` prefix).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

# PEFT's per-model_type defaults when `target_modules` is null (copied from peft 0.21), re-exported here
from .target_defaults import ADALORA_DEFAULT_TARGETS as ADALORA_DEFAULT_TARGETS
from .target_defaults import IA3_DEFAULT_FEEDFORWARD as IA3_DEFAULT_FEEDFORWARD
from .target_defaults import IA3_DEFAULT_TARGETS as IA3_DEFAULT_TARGETS
from .target_defaults import LORA_DEFAULT_TARGETS as LORA_DEFAULT_TARGETS

Targets = str | Iterable[str] | None


def is_excluded(key: str, exclude_modules: Targets) -> bool:
    """`exclude_modules`: a string is a `re.fullmatch`; a list excludes exact names and dot-suffixes."""
    if not exclude_modules:
        return False
    if isinstance(exclude_modules, str):
        return re.fullmatch(exclude_modules, key) is not None
    return any(key == e or key.endswith("." + e) for e in exclude_modules)


def is_under_modules_to_save(key: str, modules_to_save: Iterable[str] | None) -> bool:
    """True if `key` lies inside a `modules_to_save` entry (such modules are never adapted)."""
    return any(re.match(rf"(^|.*\.){re.escape(m)}($|\..*)", key) for m in modules_to_save or ())


def layer_index(key: str, layers_pattern: str | list[str] | None) -> int | None:
    """The transformer-layer index in a module path, found as PEFT finds it; None if there is none."""
    if not layers_pattern:  # None, "" or []: any layer pattern (as PEFT)
        m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
        return int(m.group("idx")) if m else None
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else list(layers_pattern)
    for p in patterns:
        m = re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", key)
        if m:
            return int(m.group("idx"))
    return None


def matches_target(
    key: str,
    target_modules: Targets,
    *,
    layers_to_transform: int | list[int] | None = None,
    layers_pattern: str | list[str] | None = None,
) -> bool:
    """PEFT's `check_target_module_exists` for a resolved (non-null, non-"all-linear") target spec."""
    if target_modules is None:
        return False
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, key) is not None
    targets = list(target_modules)
    if key in targets:
        return True  # a full-path match bypasses layers_to_transform
    if not any(key.endswith("." + t) for t in targets):
        return False
    if layers_to_transform is None or layers_to_transform == []:  # PEFT: an empty list means all layers
        return True
    idx = layer_index(key, layers_pattern)
    if idx is None:
        return False
    wanted = [layers_to_transform] if isinstance(layers_to_transform, int) else list(layers_to_transform)
    return idx in wanted


def is_linear_like(module: nn.Module) -> bool:
    """`nn.Linear` or GPT-2's `Conv1D` (what "all-linear" selects)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def expand_all_linear(model: nn.Module, task_type: Any = None) -> set[str]:
    """The full HF paths "all-linear" stands for: every Linear/Conv1D but the output embedding (and the
    classification head for SEQ_CLS models without an output embedding)."""
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    out_emb = get_output_embeddings() if callable(get_output_embeddings) else None
    excluded_names: set[str] = set()
    for name, module in model.named_modules():
        if out_emb is not None and module is out_emb:
            excluded_names.add(name)
    task = getattr(task_type, "value", task_type)
    if task == "SEQ_CLS" and out_emb is None:
        excluded_names |= {n for n, _ in model.named_modules() if n.split(".")[-1] in ("score", "classifier")}
    return {
        name
        for name, module in model.named_modules()
        if name and is_linear_like(module) and name not in excluded_names
    }


def resolve_target_modules(
    model: nn.Module, target_modules: Targets, defaults: Mapping[str, list[str] | str], task_type: Any = None
) -> str | set[str]:
    """Turn null into the model type's defaults and "all-linear" into full paths; keep regexes."""
    if target_modules is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in defaults:
            from .errors import AdapterConfigError

            raise AdapterConfigError(
                f"target_modules is null and there are no default targets for model_type {model_type!r}; "
                "set target_modules explicitly (a list of module names, a regex, or 'all-linear')."
            )
        default = defaults[str(model_type)]
        return default if isinstance(default, str) else set(default)  # a regex default stays a regex
    if isinstance(target_modules, str):
        if target_modules.lower() == "all-linear":
            return expand_all_linear(model, task_type)
        return target_modules
    return set(target_modules)


def get_pattern_key(pattern_keys: Iterable[str], key: str) -> str | None:
    """The first `rank_pattern`/`alpha_pattern` key that matches a dot-aligned suffix of `key`."""
    for k in pattern_keys:
        if re.match(rf"(.*\.)?({k})$", key):
            return k
    return None


def is_feedforward(key: str, feedforward_modules: Targets) -> bool:
    """IA3 `feedforward_modules`: a list matches by plain `endswith` (no dot boundary), a string by fullmatch."""
    if not feedforward_modules:
        return False
    if isinstance(feedforward_modules, str):
        return re.fullmatch(feedforward_modules, key) is not None
    return any(key.endswith(t) for t in feedforward_modules)


MIN_TARGET_MODULES_FOR_OPTIMIZATION = 20


def minimal_target_modules(targets: set[str], module_names: Iterable[str]) -> set[str]:
    """PEFT's `_find_minimal_target_modules`: a list of >= 20 targets becomes the shortest suffixes that
    still separate them from every other module (what PEFT then saves as `target_modules`)."""
    if len(targets) < MIN_TARGET_MODULES_FOR_OPTIMIZATION:
        return targets
    suffixes = tuple("." + t for t in targets)
    others = [n for n in module_names if n not in targets and not n.endswith(suffixes)]

    def all_suffixes(name: str) -> list[str]:
        parts = name.split(".")
        return [".".join(parts[i:]) for i in range(len(parts))][::-1]

    other_suffixes = {s for name in others for s in all_suffixes(name)}
    required: set[str] = set()
    for item, item_suffixes in sorted(((t, all_suffixes(t)) for t in targets), key=lambda tup: tup[1]):
        for suffix in item_suffixes:
            if suffix in required or suffix in other_suffixes:
                continue
            if not any(item.endswith("." + r) for r in required):
                required.add(suffix)
                break
    if not required or len(required) >= len(targets):
        return targets
    return required
