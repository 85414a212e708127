"""Prefix tuning (PEFT `PREFIX_TUNING`): trainable key/value prefixes in every attention layer."""

from ...config import PeftType
from ...prompt_learning.tuner import PromptEncoderBase, PromptLearningTuner
from ...registry import MethodSpec, register_method
from .config import PrefixTuningConfig
from .encoder import PrefixEncoder


class PrefixTuningModel(PromptLearningTuner):
    """The live form of prefix tuning adapters (see prompt_learning/tuner.py and prefix_cache.py)."""

    config_cls = PrefixTuningConfig
    is_prefix = True

    def build_encoder(self, config) -> PromptEncoderBase:  # type: ignore[override]
        return PrefixEncoder(config)


register_method(
    MethodSpec(PeftType.PREFIX_TUNING, PrefixTuningConfig, PrefixTuningModel, prompt_learning=True)
)

__all__ = ["PrefixEncoder", "PrefixTuningConfig", "PrefixTuningModel"]
