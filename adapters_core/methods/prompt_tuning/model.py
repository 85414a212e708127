"""Prompt tuning's live form: trainable virtual-token embeddings in front of the input."""

from __future__ import annotations

from ...prompt_learning.tuner import PromptEncoderBase, PromptLearningTuner
from .config import PromptTuningConfig
from .encoder import PromptEmbedding


class PromptTuningModel(PromptLearningTuner):
    """The live form of prompt tuning adapters (see prompt_learning/tuner.py)."""

    config_cls = PromptTuningConfig

    def build_encoder(self, config) -> PromptEncoderBase:
        return PromptEmbedding(config, self.word_embeddings)
