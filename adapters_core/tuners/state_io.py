"""Live parameter names ↔ PEFT's saved keys for injected tuners (reference §3).

The live model mirrors PEFT's module layout, so `base_model.model.<HF path>.lora_A.default.weight` is both our
live name and PEFT's; a saved key drops the adapter name (`….lora_A.weight`). On top of that:

* DoRA magnitudes are saved without their `.weight` leaf (the method's `checkpoint_key` does it);
* `modules_to_save` copies are saved under the wrapped module's own key (`…classifier.weight`);
* `bias="all"`/`"lora_only"` and targeted embeddings add *base* tensors, which on load overwrite the base
  model's values (they persist when adapters are disabled, as in PEFT); files from PEFT < 0.7 name a targeted
  module's bias without `base_layer`, and load too.

Loading checks every key before writing anything: a key the config does not explain, a missing adapter
tensor or a shape that does not fit raises with the module named, and the model is left untouched.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import AdapterShapeError, AdapterWeightsError
from ..peft_names import INJECTED_PREFIX
from .layer import TunerLayer, describe_shape_mismatch
from .modules_to_save import ModulesToSaveWrapper

if TYPE_CHECKING:
    from .injection import InjectionTuner

EMBEDDING_LAYER_NAMES = ("embed_tokens", "lm_head")  # PEFT's save_embedding_layers="auto" names


def remove_adapter_name(key: str, adapter_name: str) -> str:
    """PEFT's `_remove_adapter_name_from_state_dict_key`: `q_proj.lora_A.default.weight` → `q_proj.lora_A.weight`."""
    if "." not in key:
        return key
    if key.endswith(f".{adapter_name}"):  # an nn.Parameter in a ParameterDict
        return key.removesuffix(f".{adapter_name}")
    head, _, leaf = key.rpartition(".")
    head = re.sub(re.escape(f".{adapter_name}") + r"$", "", head)
    return f"{head}.{leaf}"


def _is_under(key: str, prefixes: set[str]) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:i]) in prefixes for i in range(1, len(parts) + 1))


def _tuner_layers(model: nn.Module) -> list[tuple[str, TunerLayer]]:
    """Tuner layers outside modules_to_save wrappers (a wrapper's copies are saved whole)."""
    wrappers: set[str] = set()
    out = []
    for name, module in model.named_modules():
        if isinstance(module, ModulesToSaveWrapper):
            wrappers.add(name)
        elif isinstance(module, TunerLayer) and not _is_under(name, wrappers):
            out.append((name, module))
    return out


def _wrappers(model: nn.Module) -> list[tuple[str, ModulesToSaveWrapper]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)]


def adapter_tensor_keys(tuner: InjectionTuner, adapter_name: str) -> dict[str, tuple[str, TunerLayer, str]]:
    """Live keys (no prefix) of one adapter's tuner-layer tensors → (module path, layer, container)."""
    out: dict[str, tuple[str, TunerLayer, str]] = {}
    for name, layer in _tuner_layers(tuner.model):
        for container in layer.adapter_layer_names:
            store = getattr(layer, container)
            if adapter_name not in store:
                continue
            item = store[adapter_name]
            if isinstance(item, nn.Parameter):
                out[f"{name}.{container}.{adapter_name}"] = (name, layer, container)
            else:
                for leaf, _ in item.named_parameters():
                    out[f"{name}.{container}.{adapter_name}.{leaf}"] = (name, layer, container)
    return out


def _embedding_is_targeted(model: nn.Module, target_modules: object) -> bool:
    """PEFT's test for save_embedding_layers="auto" (a list must name `embed_tokens`/`lm_head` literally)."""
    if isinstance(target_modules, str):
        return any(
            re.fullmatch(target_modules, k) is not None
            for k, _ in model.named_modules()
            if any(re.match(rf"(.*\.)?{e}$", k) for e in EMBEDDING_LAYER_NAMES)
        )
    if target_modules:
        return any(e in target_modules for e in EMBEDDING_LAYER_NAMES)  # type: ignore[operator]
    return False


def _vocab_resized(model: nn.Module, base_model_name_or_path: str | None) -> bool:
    """True when a local base checkpoint has another vocab size (PEFT then saves the embeddings too)."""
    if not base_model_name_or_path or not os.path.isfile(
        os.path.join(base_model_name_or_path, "config.json")
    ):
        return False
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if vocab is None or config is None:
        return False
    return vocab != type(config).from_pretrained(base_model_name_or_path).vocab_size


def _embedding_prefixes(tuner: InjectionTuner, adapter_name: str) -> list[str]:
    """Module paths (no prefix) whose full base tensors are saved with the adapter."""
    config = tuner.peft_config[adapter_name]
    model = tuner.model
    targeted = _embedding_is_targeted(model, getattr(config, "target_modules", None))
    if not targeted and not _vocab_resized(model, config.base_model_name_or_path):
        return []
    layers = [model.get_input_embeddings(), model.get_output_embeddings()]
    out = []
    for layer in layers:
        if layer is None:
            continue
        valid = isinstance(getattr(layer, "base_layer", None), (nn.Linear, nn.Embedding))
        if targeted and not valid:
            continue
        wanted = layer.base_layer if targeted else layer
        for name, module in model.named_modules():
            if module is wanted or (not targeted and module is layer):
                out.append(name)
                break
    return out


def adapter_state_dict(tuner: InjectionTuner, adapter_name: str) -> dict[str, torch.Tensor]:
    """The tensors PEFT's `get_peft_model_state_dict` saves for `adapter_name`, under PEFT's keys."""
    config = tuner.peft_config[adapter_name]
    full = tuner.model.state_dict()
    unwanted = [n for n in tuner.peft_config if n != adapter_name]
    filtered = {
        k: v for k, v in full.items() if not any(f".{u}." in k or k.endswith(f".{u}") for u in unwanted)
    }
    full = filtered or full

    live_keys = adapter_tensor_keys(tuner, adapter_name)
    # buffers of tuner layers (AdaLoRA's ranknum is a parameter here) are picked up structurally like PEFT
    out: dict[str, torch.Tensor] = {k: full[k] for k in live_keys if k in full}
    out.update(tuner.extra_tensors_to_save(adapter_name, full))

    bias = getattr(config, "bias", "none")
    if bias == "all":
        out.update({k: v for k, v in full.items() if k == "bias" or k.endswith(".bias")})
    elif bias == "lora_only":
        for name, _ in _tuner_layers(tuner.model):
            key = f"{name}.base_layer.bias"
            if key in full:
                out[key] = full[key]

    out = tuner.postprocess_saved_state(out, adapter_name)
    saved = {tuner.checkpoint_key(k, adapter_name): v for k, v in out.items()}

    for name, wrapper in _wrappers(tuner.model):
        if adapter_name in wrapper.modules_to_save:
            for leaf in wrapper.modules_to_save[adapter_name].state_dict():
                saved[f"{name}.{leaf}"] = full[f"{name}.modules_to_save.{adapter_name}.{leaf}"]

    for emb in _embedding_prefixes(tuner, adapter_name):
        saved.update({k: v for k, v in full.items() if k.startswith(emb + ".")})
    return {INJECTED_PREFIX + k: v for k, v in saved.items()}


def _explained_base_key(
    tuner: InjectionTuner, adapter_name: str, key: str, live: dict[str, torch.Tensor]
) -> bool:
    """Whether a non-adapter key is a base tensor this config saves (bias modes, embeddings)."""
    config = tuner.peft_config[adapter_name]
    bias = getattr(config, "bias", "none")
    if bias == "all" and (key == "bias" or key.endswith(".bias")):
        return True
    if bias == "lora_only" and key.endswith(".base_layer.bias"):
        owner = key.removesuffix(".base_layer.bias")
        if any(name == owner for name, _ in _tuner_layers(tuner.model)):
            return True
    # embeddings: saved when targeted (or when the vocabulary was resized, which we cannot see from the file)
    embeddings = [tuner.model.get_input_embeddings(), tuner.model.get_output_embeddings()]
    for name, module in tuner.model.named_modules():
        is_embedding = any(
            module is e or module is getattr(e, "base_layer", None) for e in embeddings if e is not None
        )
        if is_embedding and key.startswith(name + "."):
            return True
    return False


def _pre_07_bias_keys(
    tuner: InjectionTuner, adapter_name: str, live: dict[str, torch.Tensor]
) -> dict[str, str]:
    """`<layer>.bias` → `<layer>.base_layer.bias` for every tuner layer with a bias, when the config saves biases.

    Before PEFT 0.7 a LoRA layer *was* the `nn.Linear` (no `base_layer`), so `bias="all"`/`"lora_only"` saved a
    targeted module's bias as `….q_proj.bias`. (PEFT 0.21 silently ignores such keys, leaving the trained biases
    out; we put them where they belong.)
    """
    if getattr(tuner.peft_config[adapter_name], "bias", "none") == "none":
        return {}
    return {
        f"{name}.bias": f"{name}.base_layer.bias"
        for name, _ in _tuner_layers(tuner.model)
        if f"{name}.base_layer.bias" in live and f"{name}.bias" not in live
    }


def load_adapter_state(
    tuner: InjectionTuner, adapter_name: str, state: dict[str, torch.Tensor], source: str = "adapter"
) -> None:
    """Copy PEFT-keyed tensors into adapter `adapter_name`, validating everything first (see module doc)."""
    tuner.before_load(adapter_name, state)
    live = tuner.model.state_dict(keep_vars=True)
    adapter_keys = adapter_tensor_keys(tuner, adapter_name)
    ckpt_to_live = {tuner.checkpoint_key(k, adapter_name): k for k in adapter_keys}
    wrapper_map: dict[str, tuple[str, str]] = {}  # checkpoint key -> (live key, wrapper path)
    wrapper_dupes: set[str] = set()
    for name, wrapper in _wrappers(tuner.model):
        if adapter_name in wrapper.modules_to_save:
            for leaf in wrapper.modules_to_save[adapter_name].state_dict():
                wrapper_map[f"{name}.{leaf}"] = (f"{name}.modules_to_save.{adapter_name}.{leaf}", name)
                # bias="all" makes PEFT also write `<wrapper>.modules_to_save.<leaf>`; it ignores it on load
                wrapper_dupes.add(f"{name}.modules_to_save.{leaf}")

    plan: list[tuple[torch.Tensor, torch.Tensor]] = []
    unexplained: list[str] = []
    seen_adapter: set[str] = set()
    seen_live: set[str] = set()
    old_bias_keys = _pre_07_bias_keys(tuner, adapter_name, live)
    for raw_key, value in state.items():
        key = raw_key.removeprefix(INJECTED_PREFIX)
        key = old_bias_keys.get(key, key)
        if key in ckpt_to_live:
            live_key = ckpt_to_live[key]
            module_name, layer, container = adapter_keys[live_key]
            target = live[live_key]
            if tuple(value.shape) != tuple(target.shape):
                leaf = key[len(module_name) + 1 :].removesuffix(".weight")
                spec = (
                    (("out_features", layer.out_features),)
                    if leaf.endswith(".bias")
                    else layer.shape_spec(container, adapter_name)
                )
                raise AdapterShapeError(describe_shape_mismatch(module_name, leaf, tuple(value.shape), spec))
            seen_adapter.add(live_key)
            plan.append((target, value))
        elif key in wrapper_map:
            live_key, wrapper_name = wrapper_map[key]
            seen_live.add(live_key)
            target = live[live_key]
            if tuple(value.shape) != tuple(target.shape):
                raise AdapterShapeError(
                    f"{wrapper_name}: {key[len(wrapper_name) + 1 :]} has shape {tuple(value.shape)} but the model's "
                    f"module has {tuple(target.shape)} (modules_to_save) — a head for another model or label count?"
                )
            plan.append((target, value))
        elif key in wrapper_dupes:
            continue
        elif key in live and _explained_base_key(tuner, adapter_name, key, live):
            target = live[key]
            if tuple(value.shape) != tuple(target.shape):
                raise AdapterShapeError(
                    f"{key.rpartition('.')[0]}: saved base tensor {key.rpartition('.')[2]} has shape "
                    f"{tuple(value.shape)} but the model's has {tuple(target.shape)} — adapter trained for another model?"
                )
            plan.append((target, value))
        else:
            unexplained.append(raw_key)
    if unexplained:
        shown = ", ".join(unexplained[:5]) + (
            f" (+{len(unexplained) - 5} more)" if len(unexplained) > 5 else ""
        )
        raise AdapterWeightsError(
            f"{source}: {len(unexplained)} tensor(s) in the file are not explained by the adapter config "
            f"(no targeted module, modules_to_save entry or bias setting accounts for them): {shown}. The config "
            "and weights do not belong together, or the adapter was trained for another model."
        )
    missing_modules = {adapter_keys[k][0] for k in set(adapter_keys) - seen_adapter}
    missing_modules |= {w for k, (live_key, w) in wrapper_map.items() if live_key not in seen_live}
    if missing_modules:
        modules = sorted(missing_modules)
        shown = ", ".join(modules[:5]) + (f" (+{len(modules) - 5} more)" if len(modules) > 5 else "")
        raise AdapterWeightsError(
            f"{source}: the config targets module(s) with no tensors in the file: {shown}. The adapter file is "
            "incomplete or its config names other target_modules than it was trained with."
        )
    with torch.no_grad():
        for target, value in plan:
            target.copy_(value.to(device=target.device, dtype=target.dtype))
