"""AdaLoRA (served as the exact LoRA it converts to): its entry in the method table (adapters_core/registry.py)."""

from __future__ import annotations

from ...config import PeftType
from ...registry import MethodSpec, ServingForm, TrainName
from .config import AdaLoraConfig
from .convert import adalora_to_lora
from .model import AdaLoraTuner

SPEC = MethodSpec(
    peft_type=PeftType.ADALORA,
    config_cls=AdaLoraConfig,
    tuner_cls=AdaLoraTuner,
    serving=ServingForm.LORA,
    train_names=(TrainName("adalora"),),
    to_lora=adalora_to_lora,  # type: ignore[arg-type]
)
