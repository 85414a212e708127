"""Prefix tuning's live form: trainable key/value prefixes in every attention layer."""

from __future__ import annotations

from ...prompt_learning.tuner import PromptEncoderBase, PromptLearningTuner
from .config import PrefixTuningConfig
from .encoder import PrefixEncoder


class PrefixTuningModel(PromptLearningTuner):
    """The live form of prefix tuning adapters (see prompt_learning/tuner.py and prefix_cache.py)."""

    config_cls = PrefixTuningConfig
    is_prefix = True

    def build_encoder(self, config) -> PromptEncoderBase:
        return PrefixEncoder(config)
