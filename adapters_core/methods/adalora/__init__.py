"""AdaLoRA: config, SVD layer, tuner, and the exact conversion to plain LoRA."""

from .config import AdaLoraConfig
from .convert import adalora_to_lora
from .model import AdaLoraTuner

__all__ = ["AdaLoraConfig", "AdaLoraTuner", "adalora_to_lora"]
