"""PEFT's public names, bound to Swapyard's own objects, so that a PEFT script ports by changing its import.

Every class name here IS our class (`PeftModel is AdapterModel`), so `isinstance` checks, `from_pretrained` and
every method behave identically under both names and cannot drift apart. The four functions below are PEFT's
module-level helpers, implemented on top of the same tuner interface (`tuners/protocol.py`).

`peft_names.py` spells PEFT's file and key names; it is imported by the config layer, so these aliases (which
need the model classes) live in this module instead.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

from .adapter_model import (
    AdapterModel,
    AdapterModelForCausalLM,
    AdapterModelForFeatureExtraction,
    AdapterModelForQuestionAnswering,
    AdapterModelForSeq2SeqLM,
    AdapterModelForSequenceClassification,
    AdapterModelForTokenClassification,
    get_adapter_model,
)
from .auto import (
    AutoAdapterModel,
    AutoAdapterModelForCausalLM,
    AutoAdapterModelForFeatureExtraction,
    AutoAdapterModelForQuestionAnswering,
    AutoAdapterModelForSeq2SeqLM,
    AutoAdapterModelForSequenceClassification,
    AutoAdapterModelForTokenClassification,
)
from .config import AdapterConfig, PeftType, TaskType
from .errors import AdapterConfigError, UnsupportedError
from .peft_names import DEFAULT_ADAPTER_NAME, INJECTED_PREFIX
from .peft_options import embedding_layers_state
from .prompt_learning.config import PromptLearningConfig
from .registry import get_method

PeftConfig = AdapterConfig
PeftModel = AdapterModel
PeftModelForCausalLM = AdapterModelForCausalLM
PeftModelForSeq2SeqLM = AdapterModelForSeq2SeqLM
PeftModelForSequenceClassification = AdapterModelForSequenceClassification
PeftModelForTokenClassification = AdapterModelForTokenClassification
PeftModelForQuestionAnswering = AdapterModelForQuestionAnswering
PeftModelForFeatureExtraction = AdapterModelForFeatureExtraction
AutoPeftModel = AutoAdapterModel
AutoPeftModelForCausalLM = AutoAdapterModelForCausalLM
AutoPeftModelForSeq2SeqLM = AutoAdapterModelForSeq2SeqLM
AutoPeftModelForSequenceClassification = AutoAdapterModelForSequenceClassification
AutoPeftModelForTokenClassification = AutoAdapterModelForTokenClassification
AutoPeftModelForQuestionAnswering = AutoAdapterModelForQuestionAnswering
AutoPeftModelForFeatureExtraction = AutoAdapterModelForFeatureExtraction
get_peft_model = get_adapter_model

# A plain model returned by `inject_adapter_in_model` keeps its tuner here (not a submodule: no parameters twice).
_TUNER_ATTRIBUTE = "_swapyard_tuner"


def get_peft_config(config_dict: dict[str, Any]) -> AdapterConfig:
    """The config object of a dict with a `peft_type` (PEFT's `get_peft_config`)."""
    if "peft_type" not in config_dict:
        raise AdapterConfigError('get_peft_config needs a "peft_type" key, e.g. {"peft_type": "LORA", ...}.')
    return AdapterConfig.from_dict(config_dict)


def _tuner(model: nn.Module) -> tuple[Any, bool]:
    """(tuner, plain) behind an `AdapterModel`, a tuner, or a model from `inject_adapter_in_model`.

    `plain` is True for the injected transformers model: its keys, as in PEFT, lack the `base_model.model.` prefix.
    """
    if isinstance(model, AdapterModel):
        return model.base_model, False
    tuner = model.__dict__.get(_TUNER_ATTRIBUTE)
    if tuner is not None:
        return tuner, True
    if hasattr(model, "state_dict_to_save") and hasattr(model, "peft_config"):
        return model, False
    raise AdapterConfigError(
        f"{type(model).__name__} holds no Swapyard adapter; pass the model returned by get_peft_model, "
        "PeftModel.from_pretrained or inject_adapter_in_model."
    )


def get_peft_model_state_dict(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor] | None = None,
    adapter_name: str = DEFAULT_ADAPTER_NAME,
    unwrap_compiled: bool = False,
    save_embedding_layers: bool | str = "auto",
) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's saved keys: exactly what `save_pretrained` writes."""
    if state_dict is not None:
        raise UnsupportedError(
            "get_peft_model_state_dict(state_dict=...) is not implemented: the tensors are read from the model; "
            "call it on the (gathered) model without state_dict."
        )
    if unwrap_compiled:
        model = getattr(model, "_orig_mod", model)
    if isinstance(model, AdapterModel):
        return embedding_layers_state(model, adapter_name, save_embedding_layers)
    if save_embedding_layers != "auto":
        raise UnsupportedError(
            "save_embedding_layers other than 'auto' needs the PeftModel (get_peft_model)."
        )
    tuner, plain = _tuner(model)
    state = tuner.state_dict_to_save(adapter_name)
    return {k.removeprefix(INJECTED_PREFIX): v for k, v in state.items()} if plain else dict(state)


def set_peft_model_state_dict(
    model: nn.Module,
    peft_model_state_dict: dict[str, torch.Tensor],
    adapter_name: str = DEFAULT_ADAPTER_NAME,
    ignore_mismatched_sizes: bool = False,
    low_cpu_mem_usage: bool = False,
) -> _IncompatibleKeys:
    """Load PEFT-keyed tensors into adapter `adapter_name` (PEFT's `set_peft_model_state_dict`).

    Stricter than PEFT: a key the adapter does not explain, a missing adapter tensor or a shape that does not
    fit raises (naming it) instead of being reported, so the returned key lists are always empty.
    `low_cpu_mem_usage` changes nothing here: the adapter's tensors already exist.
    """
    if ignore_mismatched_sizes:
        raise UnsupportedError(
            "ignore_mismatched_sizes=True is not implemented: a misfit tensor is an error."
        )
    tuner, plain = _tuner(model)
    state = (
        {INJECTED_PREFIX + k: v for k, v in peft_model_state_dict.items()} if plain else peft_model_state_dict
    )
    tuner.load_state_dict_from_file(adapter_name, dict(state))
    return _IncompatibleKeys(missing_keys=[], unexpected_keys=[])


def inject_adapter_in_model(
    peft_config: AdapterConfig,
    model: nn.Module,
    adapter_name: str = DEFAULT_ADAPTER_NAME,
    low_cpu_mem_usage: bool = False,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Inject fresh adapter layers into `model` in place and return it, without a `PeftModel` around it.

    As in PEFT, prompt-learning methods and LLaMA-Adapter are refused (they are not layers). The returned model
    works with `get_peft_model_state_dict` / `set_peft_model_state_dict`.
    """
    if state_dict is not None:
        raise UnsupportedError(
            "inject_adapter_in_model(state_dict=...) (targets inferred from checkpoint keys) is not implemented; "
            "set target_modules in the config."
        )
    if peft_config.is_prompt_learning or peft_config.peft_type == PeftType.ADAPTION_PROMPT:
        raise AdapterConfigError(
            "inject_adapter_in_model does not support prompt learning and adaption prompt (as in PEFT); use "
            "get_peft_model."
        )
    tuner = get_method(peft_config.peft_type).tuner_cls(model, peft_config, adapter_name)
    model.__dict__[_TUNER_ATTRIBUTE] = tuner
    return model


__all__ = [
    "AutoPeftModel",
    "AutoPeftModelForCausalLM",
    "AutoPeftModelForFeatureExtraction",
    "AutoPeftModelForQuestionAnswering",
    "AutoPeftModelForSeq2SeqLM",
    "AutoPeftModelForSequenceClassification",
    "AutoPeftModelForTokenClassification",
    "PeftConfig",
    "PeftModel",
    "PeftModelForCausalLM",
    "PeftModelForFeatureExtraction",
    "PeftModelForQuestionAnswering",
    "PeftModelForSeq2SeqLM",
    "PeftModelForSequenceClassification",
    "PeftModelForTokenClassification",
    "PeftType",
    "PromptLearningConfig",
    "TaskType",
    "get_peft_config",
    "get_peft_model",
    "get_peft_model_state_dict",
    "inject_adapter_in_model",
    "set_peft_model_state_dict",
]
