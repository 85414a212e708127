"""Prefix tuning: its entry in the method table (adapters_core/registry.py)."""

from __future__ import annotations

from ...config import PeftType
from ...registry import MethodSpec, ServingForm, TrainName
from .config import PrefixTuningConfig
from .model import PrefixTuningModel

SPEC = MethodSpec(
    peft_type=PeftType.PREFIX_TUNING,
    config_cls=PrefixTuningConfig,
    tuner_cls=PrefixTuningModel,
    serving=ServingForm.PROMPT,
    train_names=(TrainName("prefix-tuning", learning_rate=1e-2),),
)
