"""LoRA: its entry in the method table (adapters_core/registry.py)."""

from __future__ import annotations

from ...config import PeftType
from ...registry import MethodSpec, ServingForm, TrainName
from .config import LoraConfig
from .model import LoraTuner

SPEC = MethodSpec(
    peft_type=PeftType.LORA,
    config_cls=LoraConfig,
    tuner_cls=LoraTuner,
    serving=ServingForm.LORA,
    train_names=(TrainName("lora"), TrainName("dora", {"use_dora": True})),
)
