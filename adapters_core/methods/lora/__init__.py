"""LoRA (with DoRA and rsLoRA): config, layers, tuner."""

from .config import LoraConfig
from .model import LoraTuner

__all__ = ["LoraConfig", "LoraTuner"]
