"""Load the base model's config, tokenizer and weights for a task (local directory or Hub id)."""

from __future__ import annotations

import inspect
from typing import Any

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from .config import TrainConfig
from .errors import TrainConfigError

AUTO_CLASS = {
    "causal-lm": AutoModelForCausalLM,
    "seq2seq-lm": AutoModelForSeq2SeqLM,
    "seq-cls": AutoModelForSequenceClassification,
    "token-cls": AutoModelForTokenClassification,
    "image-cls": AutoModelForImageClassification,
    "semantic-seg": AutoModelForSemanticSegmentation,
}


def load_model_config(cfg: TrainConfig) -> Any:
    """The base model's `config.json` (cheap: used for the fit checks before any weights load)."""
    try:
        return AutoConfig.from_pretrained(cfg.base_model, revision=cfg.base_model_revision)
    except (OSError, ValueError) as exc:
        raise TrainConfigError(
            f"cannot read the base model {cfg.base_model!r}: {exc}. Give a local model directory or a Hub id "
            "(with HF_HUB_OFFLINE=1 only the local cache is used)."
        ) from exc


def load_tokenizer(cfg: TrainConfig) -> Any:
    """The base model's tokenizer, with a pad token (falls back to EOS, as is usual for causal LMs)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.base_model, revision=cfg.base_model_revision)
    except (OSError, ValueError) as exc:
        raise TrainConfigError(
            f"cannot load a tokenizer from {cfg.base_model!r}: {exc}. The base model directory needs "
            "tokenizer files (tokenizer.json / tokenizer_config.json)."
        ) from exc
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise TrainConfigError(
                f"the tokenizer of {cfg.base_model!r} has neither a pad nor an eos token; batches cannot be "
                "padded. Add a pad token to the tokenizer."
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    cfg: TrainConfig, label2id: dict[str, int] | None = None, pad_token_id: int | None = None
) -> Any:
    """Weights for `cfg.task`; classification heads get `num_labels`, `label2id` and `id2label`.

    A head whose size differs from the checkpoint's (a base saved with another label count) is
    re-initialised, which is what a new task needs anyway. Call after seeding: the head's init draws
    from the global RNG.
    """
    kwargs: dict[str, Any] = {"revision": cfg.base_model_revision}
    if label2id is not None:
        kwargs.update(  # num_labels follows from id2label
            label2id=dict(label2id),
            id2label={i: lab for lab, i in label2id.items()},
            ignore_mismatched_sizes=True,
        )
    try:
        model = AUTO_CLASS[cfg.task].from_pretrained(cfg.base_model, **kwargs)
    except (OSError, ValueError) as exc:
        raise TrainConfigError(f"cannot load base model {cfg.base_model!r} for {cfg.task}: {exc}") from exc
    if getattr(model.config, "pad_token_id", None) is None and pad_token_id is not None:
        # Sequence classifiers of decoder models find each row's last real token through pad_token_id.
        model.config.pad_token_id = pad_token_id
    return model


def accepts_token_type_ids(model: Any) -> bool:
    """Whether the base model's forward takes `token_type_ids` (BERT-style pairs) — else they are dropped."""
    return "token_type_ids" in inspect.signature(model.forward).parameters
