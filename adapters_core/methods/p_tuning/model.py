"""P-tuning's live form: virtual tokens from a trainable MLP/LSTM prompt encoder."""

from __future__ import annotations

from ...prompt_learning.tuner import PromptEncoderBase, PromptLearningTuner
from .config import PromptEncoderConfig
from .encoder import PromptEncoder


class PromptEncoderModel(PromptLearningTuner):
    """The live form of P-tuning adapters (see prompt_learning/tuner.py)."""

    config_cls = PromptEncoderConfig

    def build_encoder(self, config) -> PromptEncoderBase:
        return PromptEncoder(config)
