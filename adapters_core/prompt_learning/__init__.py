"""Machinery shared by prompt tuning, P-tuning and prefix tuning: config fields, virtual-token forward,
prefix KV caches and forward-consistent generation. The methods themselves live in `methods/`."""

from .config import PromptLearningConfig, fill_derived_fields
from .tuner import PromptEncoderBase, PromptLearningTuner

__all__ = ["PromptEncoderBase", "PromptLearningConfig", "PromptLearningTuner", "fill_derived_fields"]
