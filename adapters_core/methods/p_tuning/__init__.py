"""P-tuning (PEFT `P_TUNING`): virtual tokens from a trainable MLP/LSTM prompt encoder."""

from ...config import PeftType
from ...prompt_learning.tuner import PromptEncoderBase, PromptLearningTuner
from ...registry import MethodSpec, register_method
from .config import PromptEncoderConfig, PromptEncoderReparameterizationType
from .encoder import PromptEncoder


class PromptEncoderModel(PromptLearningTuner):
    """The live form of P-tuning adapters (see prompt_learning/tuner.py)."""

    config_cls = PromptEncoderConfig

    def build_encoder(self, config) -> PromptEncoderBase:  # type: ignore[override]
        return PromptEncoder(config)


register_method(MethodSpec(PeftType.P_TUNING, PromptEncoderConfig, PromptEncoderModel, prompt_learning=True))

__all__ = [
    "PromptEncoder",
    "PromptEncoderConfig",
    "PromptEncoderModel",
    "PromptEncoderReparameterizationType",
]
