"""P-tuning: its entry in the method table (adapters_core/registry.py)."""

from __future__ import annotations

from ...config import PeftType
from ...registry import MethodSpec, ServingForm, TrainName
from .config import PromptEncoderConfig
from .model import PromptEncoderModel

SPEC = MethodSpec(
    peft_type=PeftType.P_TUNING,
    config_cls=PromptEncoderConfig,
    tuner_cls=PromptEncoderModel,
    serving=ServingForm.PROMPT,
    train_names=(TrainName("p-tuning", learning_rate=1e-3),),
)
