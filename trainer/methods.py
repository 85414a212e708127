"""From `--method` and `--task` to an adapters_core config, and whether they fit the base model.

`check_fit` runs on the base model's *config* (no weights loaded), so a method that cannot work is refused
before anything heavy happens:

    task        needs a model type with that head (AutoModelFor... mapping); causal-lm needs a decoder
    llama-adapter   llama / mistral / gpt2 (PEFT's supported types), causal-lm only
    prefix-tuning   a decoder with a KV cache (causal-lm or seq2seq-lm); PEFT 0.21 + transformers 5 refuses
                    prefix tuning for classification heads, so we do too (the adapter could not be loaded)
    lora, dora, adalora, ia3    target_modules given, or a model type with PEFT's default targets

Which names `--method` accepts, and the config class each builds, come from adapters_core's method table
(`adapters_core.registry`): a newly registered method trains without a change here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers.models.auto import modeling_auto

from adapters_core import AdapterConfig, AdapterError, PeftType
from adapters_core.registry import MethodSpec, TrainName, train_method, train_names

from .config import TrainConfig
from .errors import IncompatibleMethodError, TrainConfigError

TASK_TYPE = {
    "causal-lm": "CAUSAL_LM",
    "seq2seq-lm": "SEQ_2_SEQ_LM",
    "seq-cls": "SEQ_CLS",
    "token-cls": "TOKEN_CLS",
    # PEFT has no task type for images: its vision guides give none, and name the head in modules_to_save
    # (the trainer does: trainer/images.py `head_modules`).
    "image-cls": None,
    "semantic-seg": None,
}
LLAMA_ADAPTER_MODEL_TYPES = ("llama", "mistral", "gpt2")
_TASK_MAPPING = {
    "causal-lm": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    "seq2seq-lm": modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    "seq-cls": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    "token-cls": modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
    "image-cls": modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    "semantic-seg": modeling_auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES,
}
DEFAULT_NUM_VIRTUAL_TOKENS = 8


def resolve_method(name: str) -> tuple[MethodSpec, TrainName]:
    """The method table's entry for `--method NAME`; `TrainConfigError` listing the names it knows."""
    try:
        return train_method(name)
    except KeyError:
        raise TrainConfigError(
            f"--method {name!r} is not a registered adapter method; choose one of {', '.join(train_names())}."
        ) from None


def is_decoder(model_config: Any) -> bool:
    """True if the model generates with a KV cache: encoder-decoders and decoder-only LMs.

    Encoder-only models (BERT, RoBERTa) are in the masked-LM mapping and are not decoders unless their
    config says `is_decoder`.
    """
    if getattr(model_config, "is_encoder_decoder", False) or getattr(model_config, "is_decoder", False):
        return True
    return model_config.model_type not in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES


def check_fit(cfg: TrainConfig, model_config: Any) -> None:
    """Raise `IncompatibleMethodError` if the task or method cannot work on this base model."""
    spec, _ = resolve_method(cfg.method)
    model_type = model_config.model_type
    where = f"base model {cfg.base_model} (model_type {model_type!r})"
    if model_type not in _TASK_MAPPING[cfg.task]:
        raise IncompatibleMethodError(
            f"{where} has no {cfg.task} head in transformers; pick a --task it supports or another base model."
        )
    if cfg.task == "causal-lm" and not is_decoder(model_config):
        raise IncompatibleMethodError(
            f"{where} is an encoder-only model; --task causal-lm needs a decoder (e.g. llama, gpt2)."
        )
    if cfg.task in ("image-cls", "semantic-seg") and spec.prompt_learning:
        raise IncompatibleMethodError(
            f"--method {cfg.method} does not fit --task {cfg.task}: prompt methods add virtual tokens through word "
            "embeddings, which an image model does not have (PEFT cannot train them on it either). Use lora, "
            "dora, adalora or ia3."
        )
    if spec.peft_type == PeftType.ADAPTION_PROMPT:
        if model_type not in LLAMA_ADAPTER_MODEL_TYPES:
            raise IncompatibleMethodError(
                f"--method llama-adapter does not fit {where}: LLaMA-Adapter wraps the attention of "
                f"{', '.join(LLAMA_ADAPTER_MODEL_TYPES)} models only. Use lora or prompt-tuning for this model."
            )
        if cfg.task != "causal-lm":
            raise IncompatibleMethodError(
                f"--method llama-adapter trains causal language models only, not --task {cfg.task}; "
                "use --task causal-lm, or lora for classification."
            )
    if spec.peft_type == PeftType.PREFIX_TUNING:
        if not is_decoder(model_config):
            raise IncompatibleMethodError(
                f"--method prefix-tuning does not fit {where}: it prepends keys/values to the KV cache, and "
                "this encoder-only model has none. Use prompt-tuning or p-tuning instead."
            )
        if cfg.task not in ("causal-lm", "seq2seq-lm"):
            raise IncompatibleMethodError(
                f"--method prefix-tuning with --task {cfg.task}: PEFT (0.21 with transformers 5) cannot load "
                "prefix-tuned classifiers, so the adapter would be unusable. Use prompt-tuning, p-tuning or "
                "lora for classification."
            )
    defaults = getattr(spec.tuner_cls, "default_targets", None)  # injected methods: PEFT's per-model targets
    no_targets = cfg.method_config.get("target_modules") is None
    if defaults is not None and no_targets and model_type not in defaults:
        raise IncompatibleMethodError(
            f"--method {cfg.method}: no default target modules for {where}; set them in the method "
            'config, e.g. --method-config \'{"target_modules": ["q_proj", "v_proj"]}\'.'
        )


def build_adapter_config(cfg: TrainConfig, model_config: Any, *, total_steps: int) -> AdapterConfig:
    """The adapters_core config for this run: the user's method options plus what the trainer knows.

    The trainer fills `task_type`; the options the method's name implies (`use_dora` for DoRA, which win);
    AdaLoRA's `total_step` (its budget schedule needs the run length); `num_virtual_tokens` for prompt
    methods; the tokenizer of a TEXT-initialised prompt; LLaMA-Adapter's length and layer count. Otherwise
    a value the user gave always wins.
    """
    spec, train_name = resolve_method(cfg.method)
    cls = spec.config_cls
    names = {f.name for f in dataclasses.fields(cls)}
    options = dict(cfg.method_config)
    given_task = options.pop("task_type", None)
    if given_task is not None and str(given_task) != str(TASK_TYPE[cfg.task]):
        raise TrainConfigError(
            f"method_config task_type {given_task!r} contradicts --task {cfg.task} "
            f"({TASK_TYPE[cfg.task]}); drop task_type from the method config."
        )
    options.pop("peft_type", None)
    options["task_type"] = TASK_TYPE[cfg.task]
    options.update(train_name.options)
    if "total_step" in names:  # AdaLoRA
        options.setdefault("total_step", total_steps)
    if spec.prompt_learning:
        options.setdefault("num_virtual_tokens", DEFAULT_NUM_VIRTUAL_TOKENS)
        init = str(options.get("prompt_tuning_init", "")).upper()
        if "tokenizer_name_or_path" in names and init.endswith("TEXT"):
            options.setdefault("tokenizer_name_or_path", cfg.base_model)
    if spec.peft_type == PeftType.ADAPTION_PROMPT:
        layers = (
            getattr(model_config, "num_hidden_layers", None) or getattr(model_config, "n_layer", None) or 1
        )
        options.setdefault("adapter_len", 10)
        options.setdefault("adapter_layers", min(int(layers), 30))
    unknown = sorted(set(options) - names)
    if unknown:
        raise TrainConfigError(
            f"method_config for --method {cfg.method}: unknown option(s) {unknown}; {cls.__name__} "
            f"accepts: {', '.join(sorted(names - {'peft_type', 'task_type'}))}."
        )
    try:
        return cls(**options)
    except (AdapterError, TypeError, ValueError) as exc:
        raise TrainConfigError(f"method_config for --method {cfg.method}: {exc}") from exc
