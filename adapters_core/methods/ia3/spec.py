"""IA³: its entry in the method table (adapters_core/registry.py)."""

from __future__ import annotations

from ...config import PeftType
from ...registry import MethodSpec, ServingForm, TrainName
from .config import IA3Config
from .model import IA3Tuner

SPEC = MethodSpec(
    peft_type=PeftType.IA3,
    config_cls=IA3Config,
    tuner_cls=IA3Tuner,
    serving=ServingForm.IA3,
    train_names=(TrainName("ia3", learning_rate=3e-3),),
)
