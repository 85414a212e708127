"""LLaMA-Adapter: its entry in the method table (adapters_core/registry.py)."""

from __future__ import annotations

from ...config import PeftType
from ...registry import MethodSpec, ServingForm, TrainName
from .config import AdaptionPromptConfig
from .model import AdaptionPromptModel

SPEC = MethodSpec(
    peft_type=PeftType.ADAPTION_PROMPT,
    config_cls=AdaptionPromptConfig,
    tuner_cls=AdaptionPromptModel,
    serving=ServingForm.PROMPT,
    train_names=(TrainName("llama-adapter", learning_rate=9e-3),),
)
