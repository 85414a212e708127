"""Prompt tuning: its entry in the method table (adapters_core/registry.py)."""

from __future__ import annotations

from ...config import PeftType
from ...registry import MethodSpec, ServingForm, TrainName
from .config import PromptTuningConfig
from .model import PromptTuningModel

SPEC = MethodSpec(
    peft_type=PeftType.PROMPT_TUNING,
    config_cls=PromptTuningConfig,
    tuner_cls=PromptTuningModel,
    serving=ServingForm.PROMPT,
    train_names=(TrainName("prompt-tuning", learning_rate=3e-2),),
)
