"""AdaLoRA: config, SVD layer, tuner, rank-budget allocator, and the exact conversion to plain LoRA."""

from .allocator import RankAllocator, orthogonal_regularization
from .config import AdaLoraConfig
from .convert import adalora_to_lora
from .model import AdaLoraTuner

__all__ = ["AdaLoraConfig", "AdaLoraTuner", "RankAllocator", "adalora_to_lora", "orthogonal_regularization"]
