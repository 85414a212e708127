"""PEFT's keyword options of `AdapterModel`, each doing what it does in PEFT or refused by name.

* loading keywords (`from_pretrained` / `load_adapter` `**kwargs`): the Hub address of the adapter files, the
  device their tensors are read to, Swapyard's `allow_pickle`;
* `autocast_adapter_dtype=False`: adapter weights stay in the base layer's float16/bfloat16 dtype (PEFT's
  default upcasts them to float32, and so do our layers);
* `save_embedding_layers`: whether the base embedding matrices are saved with the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import UnsupportedError
from .peft_names import INJECTED_PREFIX
from .tuners.layer import TunerLayer
from .tuners.modules_to_save import ModulesToSaveWrapper

if TYPE_CHECKING:
    from .adapter_model import AdapterModel

HUB_KEYWORDS = ("revision", "subfolder", "cache_dir", "token")


@dataclass
class LoadOptions:
    """`hub`: where the adapter files are (for `resolve_file`); `weights`: how they are read."""

    hub: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(
        cls,
        method: str,
        kwargs: dict[str, Any],
        ephemeral_gpu_offload: bool = False,
        key_mapping: dict[str, str] | None = None,
    ) -> LoadOptions:
        """Split PEFT's `**kwargs`; anything PEFT would honour and Swapyard cannot is an error naming it."""
        if ephemeral_gpu_offload:
            raise UnsupportedError(
                "ephemeral_gpu_offload=True is not implemented (Swapyard does not offload the base model); "
                "load without it."
            )
        if key_mapping:
            raise UnsupportedError(
                "key_mapping (renaming checkpoint keys) is not implemented; Swapyard reads PEFT's own keys."
            )
        kwargs = dict(kwargs)
        options = cls(hub={k: kwargs.pop(k, None) for k in HUB_KEYWORDS})
        legacy_token = kwargs.pop("use_auth_token", None)
        if options.hub["token"] is None and legacy_token is not None:
            options.hub["token"] = legacy_token
        if "allow_pickle" in kwargs:  # Swapyard's own; left out, weights_io's default applies
            options.weights["allow_pickle"] = kwargs.pop("allow_pickle")
        device = kwargs.pop("torch_device", None)
        if device is not None:
            options.weights["device"] = device
        if kwargs.pop("ignore_mismatched_sizes", False):
            raise UnsupportedError(
                "ignore_mismatched_sizes=True is not implemented: a tensor that does not fit is an error."
            )
        if kwargs:
            raise TypeError(
                f"{method}() got unsupported keyword arguments {sorted(kwargs)}; it takes "
                f"{[*HUB_KEYWORDS, 'torch_device', 'allow_pickle', 'use_auth_token']}."
            )
        return options


def keep_adapter_dtype(tuner: Any, adapter_name: str) -> None:
    """`autocast_adapter_dtype=False`: cast the adapter's layer weights to their base layer's half dtype.

    Like PEFT, only injected layers are concerned (prompt encoders and LLaMA-Adapter keep their dtype).
    """
    layers = tuner.tuner_layers() if hasattr(type(tuner), "tuner_layers") else []
    for _, layer in layers:
        dtype = getattr(getattr(layer.base_layer, "weight", None), "dtype", None)
        if dtype not in (torch.float16, torch.bfloat16):
            continue
        for container in layer.adapter_layer_names:
            store = getattr(layer, container)
            if adapter_name not in store:
                continue
            item = store[adapter_name]
            for param in item.parameters() if isinstance(item, nn.Module) else [item]:
                param.data = param.data.to(dtype)


def set_adapter_trainable(model: nn.Module, adapter_name: str, inference_mode: bool) -> None:
    """PEFT's `set_adapter(name, inference_mode)`: the activated adapter's layer tensors and head copies
    become trainable unless `inference_mode` (PEFT's default makes them trainable, even for a loaded adapter)."""
    for module in model.modules():
        if isinstance(module, TunerLayer) and module.has_adapter(adapter_name):
            module.set_adapter([adapter_name], inference_mode=inference_mode)
        elif isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
            module.set_adapter(adapter_name, inference_mode=inference_mode)


def _embedding_paths(model: nn.Module) -> list[str]:
    """PEFT's embedding module names: when an embedding is adapted, only the adapted ones' `base_layer`;
    otherwise the input and output embeddings themselves."""
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    layers = [layer for layer in (f() for f in (get_in, get_out) if callable(f)) if layer is not None]
    if any(isinstance(layer, TunerLayer) for layer in layers):
        layers = [layer.base_layer for layer in layers if isinstance(layer, TunerLayer)]
    paths = []
    for wanted in layers:
        for name, module in model.named_modules():
            if module is wanted:
                paths.append(name)
                break
    return paths


def embedding_layers_state(
    model: AdapterModel, adapter_name: str, save_embedding_layers: str | bool
) -> dict[str, torch.Tensor]:
    """The adapter's saved tensors with PEFT's `save_embedding_layers` applied.

    "auto" is the tuner's own rule (embeddings saved when targeted or when the vocabulary was resized);
    True adds the base embedding matrices; False leaves them out.
    """
    state = model.base_model.state_dict_to_save(adapter_name)
    if save_embedding_layers == "auto":
        return state
    base = model.get_base_model()
    prefixes = [f"{INJECTED_PREFIX}{p}." for p in _embedding_paths(base)]
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in prefixes)}
    if save_embedding_layers is False:
        return state
    if model.active_peft_config.is_prompt_learning:
        raise UnsupportedError("save_embedding_layers=True is not implemented for prompt-learning adapters.")
    for key, value in base.state_dict().items():
        full = INJECTED_PREFIX + key
        if any(full.startswith(p) for p in prefixes):
            state[full] = value.detach().cpu()
    return state
