"""Load the base model, its tokenizer (or image processor) and the MultiAdapterModel around it.

The kind follows from the base's config: encoder-decoder -> seq2seq-lm, an architecture named
`*ForSequenceClassification` -> seq-cls, `*ForImageClassification` -> image-cls, `*ForSemanticSegmentation`
-> semantic-seg, anything else -> causal-lm. The kind decides which routes serve. An image base is read with
its own image processor (`AutoImageProcessor`, saved next to it) and has no tokenizer (server/vision.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
)

from adapters_core.multi import MultiAdapterModel

from .budget import LoraGeometry, device_budgets, free_device_bytes
from .settings import Settings
from .tokenization import Tokenization
from .vision import IMAGE_KINDS, ImageBaseTokenization

log = logging.getLogger("swapyard.engine")

BaseKind = Literal["causal-lm", "seq2seq-lm", "seq-cls", "image-cls", "semantic-seg"]
# Architecture name suffix -> kind (checked in this order; the rest are causal LMs unless encoder-decoder).
HEAD_SUFFIXES: dict[str, BaseKind] = {
    "ForSequenceClassification": "seq-cls",
    "ForImageClassification": "image-cls",
    "ForSemanticSegmentation": "semantic-seg",
}
AUTO_CLASS = {
    "causal-lm": AutoModelForCausalLM,
    "seq2seq-lm": AutoModelForSeq2SeqLM,
    "seq-cls": AutoModelForSequenceClassification,
    "image-cls": AutoModelForImageClassification,
    "semantic-seg": AutoModelForSemanticSegmentation,
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedBase:
    """The served base: the multi-adapter model, its kind, tokenizer and where it runs."""

    model: MultiAdapterModel
    kind: BaseKind
    tokenization: Tokenization
    device: torch.device
    config: Any
    image_processor: Any = None  # image bases: the base's own (AutoImageProcessor)

    @property
    def id2label(self) -> dict[int, str]:
        """The base head's labels (seq-cls bases)."""
        return {int(k): str(v) for k, v in (getattr(self.config, "id2label", None) or {}).items()}


def base_kind(config: Any) -> BaseKind:
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq-lm"
    architectures = [str(a) for a in getattr(config, "architectures", None) or []]
    for suffix, kind in HEAD_SUFFIXES.items():
        if any(a.endswith(suffix) for a in architectures):
            return kind
    return "causal-lm"


def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_base(settings: Settings, base_model: str) -> LoadedBase:
    """Read config, tokenizer and weights of `base_model` (a directory or Hub id) and wrap them."""
    revision = settings.base_model_revision
    config = AutoConfig.from_pretrained(base_model, revision=revision)
    kind = base_kind(config)
    image_processor = None
    if kind in IMAGE_KINDS:
        image_processor = AutoImageProcessor.from_pretrained(base_model, revision=revision)
        tokenization: Tokenization = ImageBaseTokenization(base_model, kind)
    else:
        tokenization = Tokenization.from_pretrained(base_model, revision=revision)
    model = AUTO_CLASS[kind].from_pretrained(base_model, revision=revision, dtype=DTYPES[settings.dtype])
    generation_config = getattr(model, "generation_config", None)
    tokenization.add_eos_ids(getattr(generation_config, "eos_token_id", None))
    tokenization.add_eos_ids(getattr(config, "eos_token_id", None))
    device = pick_device(settings.device)
    model.to(device)
    adapter_bytes = settings.adapter_device_bytes
    if adapter_bytes is None:  # the default: a share of what the device has free (server/budget.py)
        budgets = device_budgets(
            free_device_bytes(device),
            LoraGeometry.of(model),
            max_adapters=settings.max_adapters,
            max_rank=settings.max_adapter_rank,
        )
        adapter_bytes = budgets.adapter_bytes
        log.info("adapter pools: %d MiB (--adapter-device-bytes default)", adapter_bytes >> 20)
    multi = MultiAdapterModel(
        model,
        max_adapters=settings.max_adapters,
        adapter_memory_bytes=adapter_bytes,
        rank_capacity=settings.max_adapter_rank,
    )
    return LoadedBase(
        model=multi,
        kind=kind,
        tokenization=tokenization,
        device=device,
        config=config,
        image_processor=image_processor,
    )
