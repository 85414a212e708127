"""Prompt-family adapter files (prompt tuning, P-tuning, prefix tuning, LLaMA-Adapter) in serving form.

`parse_prompt_adapter` is the prompt branch of `parse_adapter` (parsed.py): it checks a PEFT state dict against
the base model and keeps only what inference needs (reference §8-§12):

* prompt tuning / P-tuning: the saved table's first `n` rows, `(n, d)` — P-tuning's MLP/LSTM is never saved, the
  table *is* the inference form; seq2seq rows `n..2n` are never used (§9.2).
* prefix tuning: per attention layer the key and value prefix, each `(H_kv, n, hd)`, in the layer order the
  model receives them — for seq2seq PEFT's duplicate-then-split quirk (§10.2) is resolved here, once.
* LLaMA-Adapter: per adapted attention module its `adaption_prompt (1, Lp, hidden)` and `adaption_gate (1,)`.
* task heads (modules_to_save, e.g. BERT's classifier) become per-slot overrides like any other adapter's.

Nothing here touches the model; it only reads the base modules' shapes and config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from ..config import AdapterConfig, TaskType
from ..errors import AdapterConfigError, AdapterShapeError, AdapterWeightsError, UnsupportedError
from ..methods.adaption_prompt.config import SUPPORTED_TARGETS, AdaptionPromptConfig
from ..methods.prefix_tuning.config import PrefixTuningConfig
from ..peft_names import INJECTED_PREFIX, PROMPT_EMBEDDINGS_KEY, PROMPT_PREFIX
from ..prompt_learning.config import PromptLearningConfig, fill_derived_fields
from ..prompt_learning.prefix_cache import prefix_kv, prefix_strategy, self_attention_modules

# Task types whose token_type_ids PEFT keeps (zero-prefixed); others drop them (forward.py, §9.2).
KEEPS_TOKEN_TYPES = (TaskType.SEQ_CLS, TaskType.TOKEN_CLS, TaskType.QUESTION_ANS)
# The heads PEFT adds to modules_to_save per task type (§13.1).
TASK_HEADS = {
    TaskType.SEQ_CLS: ("classifier", "score"),
    TaskType.TOKEN_CLS: ("classifier", "score"),
    TaskType.QUESTION_ANS: ("qa_outputs",),
}


@dataclass
class PromptTensors:
    """What one prompt-family adapter adds to a row (see the module docstring for the shapes).

    kind: "virtual" (prompt tuning, P-tuning), "prefix" or "adaption" (LLaMA-Adapter).
    length: virtual tokens, prefix positions, or adapter_len.
    """

    kind: str
    length: int
    virtual: torch.Tensor | None = None  # (n, d)
    prefix: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # per layer (H, n, hd) ×2
    adaption: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # path -> (P, gate)
    keep_token_types: bool = False

    def tensors(self) -> list[torch.Tensor]:
        out = [self.virtual] if self.virtual is not None else []
        out += [t for kv in self.prefix for t in kv]
        return out + [t for pg in self.adaption.values() for t in pg]


def base_kind(model: Any) -> str:
    """How rows are laid out for this base: "seq2seq" (T5, BART), "causal" (decoder-only) or "encoder" (BERT).

    Read from the config and transformers' own registry, never from class names: an encoder-decoder says so in
    its config; a model type with a causal-LM head but no masked-LM head is decoder-only (GPT-NeoX, BLOOM,
    Falcon, …), and a BERT-style type configured `is_decoder` runs causally. A model type transformers does
    not know (remote code) is judged by its self-attention modules' `is_causal`.
    """
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    if getattr(config, "is_decoder", False):
        return "causal"
    model_type = getattr(config, "model_type", None)
    if model_type in CONFIG_MAPPING_NAMES:
        causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        return "causal" if causal and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "encoder"
    modules = self_attention_modules(model)
    return "causal" if modules and all(getattr(m, "is_causal", False) for _, m in modules) else "encoder"


def _task_fits(kind: str, task: TaskType) -> bool:
    if kind == "seq2seq":
        return task == TaskType.SEQ_2_SEQ_LM
    if kind == "causal":
        return task == TaskType.CAUSAL_LM
    return task in (*KEEPS_TOKEN_TYPES, TaskType.FEATURE_EXTRACTION)


def parse_prompt_adapter(
    config: AdapterConfig, state: dict[str, torch.Tensor], modules: dict[str, nn.Module]
) -> tuple[AdapterConfig, PromptTensors, dict[str, torch.Tensor]]:
    """Check a prompt-family adapter against the base (`modules[""]` is the model) and convert it.

    Returns (the config with PEFT's derived fields filled, the prompt tensors, the remaining state: head
    tensors under PEFT keys for the caller's modules_to_save handling). Raises `AdapterShapeError` when a table
    does not fit the base, `AdapterWeightsError` for missing or unexplained tensors, `AdapterConfigError` for a
    task type this base cannot serve, `UnsupportedError` for LLaMA-Adapter on an architecture PEFT lacks.
    """
    model: Any = modules[""]
    if isinstance(config, AdaptionPromptConfig):
        return config, _adaption(config, dict(state), modules), {}
    assert isinstance(config, PromptLearningConfig)
    config = dataclasses.replace(config)  # fill_derived_fields writes; keep the caller's object intact
    prefix = isinstance(config, PrefixTuningConfig)
    fill_derived_fields(config, model.config, kv_heads=prefix)
    kind = base_kind(model)
    task = TaskType(config.task_type)
    if not _task_fits(kind, task):
        raise AdapterConfigError(
            f"a {task.value} {config.peft_type} adapter cannot run on this {kind} base "
            f"({type(model).__name__}); the adapter was trained for another kind of model."
        )
    _check_fields(config, model, prefix)
    if prefix and kind == "encoder":
        prefix_strategy(model)  # UnsupportedError when no self-attention of the model takes a KV cache
    state = dict(state)
    if PROMPT_EMBEDDINGS_KEY not in state:
        raise AdapterWeightsError(
            f"the file has no {PROMPT_EMBEDDINGS_KEY!r} tensor (not a prompt-learning adapter)."
        )
    table = state.pop(PROMPT_EMBEDDINGS_KEY).float()
    n, layers, d = (
        int(config.num_virtual_tokens or 0),
        int(config.num_layers or 0),
        int(config.token_dim or 0),
    )
    want = (n, layers * 2 * d) if prefix else (config.total_virtual_tokens, d)
    if tuple(table.shape) != want:
        raise AdapterShapeError(
            f"{PROMPT_EMBEDDINGS_KEY} has shape {tuple(table.shape)}, but this base and config need {want} "
            f"(num_virtual_tokens={n}, token_dim={d}, num_layers={layers}); the adapter was trained for another "
            "base model."
        )
    heads = {k: v for k, v in state.items() if k.startswith(PROMPT_PREFIX)}
    unexplained = sorted(set(state) - set(heads))
    if unexplained:
        raise AdapterWeightsError(f"unexpected tensors {unexplained[:4]} in a {config.peft_type} adapter.")
    if heads:  # PEFT adds the task's heads to modules_to_save; a hand-written config may lack them
        extra = [h for h in TASK_HEADS.get(task, ()) if h not in (config.modules_to_save or [])]
        config.modules_to_save = [*(config.modules_to_save or []), *extra]
    if not prefix:
        tensors = PromptTensors(
            "virtual", n, virtual=table[:n].contiguous(), keep_token_types=task in KEEPS_TOKEN_TYPES
        )
    else:
        pairs = 2 if kind == "seq2seq" else 1
        per_layer = prefix_kv(table, 1, layers, int(config.num_attention_heads or 0), pairs)
        kv = [(c[0][0].contiguous(), c[1][0].contiguous()) for c in per_layer]  # (H, n, hd) each
        tensors = PromptTensors("prefix", n, prefix=kv, keep_token_types=task in KEEPS_TOKEN_TYPES)
    return config, tensors, heads


def _check_fields(config: PromptLearningConfig, model: Any, prefix: bool) -> None:
    """A config filled for another base (other width, depth or heads) would silently misplace the table."""
    probe = type(config)(task_type=config.task_type, num_virtual_tokens=config.num_virtual_tokens)
    fill_derived_fields(probe, model.config, kv_heads=prefix)
    fields = ("token_dim", "num_layers", "num_attention_heads") if prefix else ("token_dim",)
    for name in fields:
        have, want = getattr(config, name), getattr(probe, name)
        if have != want:
            raise AdapterShapeError(
                f"{name}={have} in the config, but this base model ({type(model).__name__}) needs {name}={want}: "
                "the prompt table would not fit. The adapter was trained for another base model."
            )


def _adaption(
    config: AdaptionPromptConfig, state: dict[str, torch.Tensor], modules: dict[str, nn.Module]
) -> PromptTensors:
    model: Any = modules[""]
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_TARGETS:
        raise UnsupportedError(
            f"LLaMA-Adapter supports model types {sorted(SUPPORTED_TARGETS)} (as PEFT does), not {model_type!r}."
        )
    if config.adapter_len is None or config.adapter_layers is None:
        raise AdapterConfigError("AdaptionPromptConfig needs adapter_len and adapter_layers.")
    target = config.target_modules or SUPPORTED_TARGETS[model_type]
    paths = [p for p in modules if p.endswith("." + target)]
    if len(paths) < config.adapter_layers:
        raise AdapterConfigError(
            f"adapter_layers={config.adapter_layers}, but the base has only {len(paths)} {target!r} modules."
        )
    paths = paths[-config.adapter_layers :]  # the top layers, as PEFT picks them
    hidden = int(model.config.hidden_size)
    wanted = {
        f"{INJECTED_PREFIX}{p}.{param}" for p in paths for param in ("adaption_prompt", "adaption_gate")
    }
    if set(state) != wanted:
        raise AdapterWeightsError(
            f"LLaMA-Adapter tensors {sorted(set(state) ^ wanted)[:4]} are missing or unexplained for the adapted "
            f"modules {paths} (adapter_layers={config.adapter_layers}); the file and config disagree."
        )
    adaption = {}
    for p in paths:
        prompt, gate = (
            state[f"{INJECTED_PREFIX}{p}.adaption_prompt"],
            state[f"{INJECTED_PREFIX}{p}.adaption_gate"],
        )
        if tuple(prompt.shape) != (1, config.adapter_len, hidden) or tuple(gate.shape) != (1,):
            raise AdapterShapeError(
                f"{p}: adaption_prompt {tuple(prompt.shape)} / adaption_gate {tuple(gate.shape)}, but this base "
                f"needs (1, {config.adapter_len}, {hidden}) / (1,); the adapter was trained for another base."
            )
        adaption[p] = (prompt, gate)
    return PromptTensors("adaption", config.adapter_len, adaption=adaption)
