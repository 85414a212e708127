"""Prompt tuning (PEFT `PROMPT_TUNING`): trainable virtual-token embeddings in front of the input."""

from ...config import PeftType
from ...prompt_learning.tuner import PromptEncoderBase, PromptLearningTuner
from ...registry import MethodSpec, register_method
from .config import PromptTuningConfig, PromptTuningInit
from .encoder import PromptEmbedding


class PromptTuningModel(PromptLearningTuner):
    """The live form of prompt tuning adapters (see prompt_learning/tuner.py)."""

    config_cls = PromptTuningConfig

    def build_encoder(self, config) -> PromptEncoderBase:  # type: ignore[override]
        return PromptEmbedding(config, self.word_embeddings)


register_method(
    MethodSpec(PeftType.PROMPT_TUNING, PromptTuningConfig, PromptTuningModel, prompt_learning=True)
)

__all__ = ["PromptEmbedding", "PromptTuningConfig", "PromptTuningInit", "PromptTuningModel"]
