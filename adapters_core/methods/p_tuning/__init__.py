"""P-tuning (PEFT `P_TUNING`): virtual tokens from a trainable MLP/LSTM prompt encoder."""

from .config import PromptEncoderConfig, PromptEncoderReparameterizationType
from .encoder import PromptEncoder
from .model import PromptEncoderModel

__all__ = [
    "PromptEncoder",
    "PromptEncoderConfig",
    "PromptEncoderModel",
    "PromptEncoderReparameterizationType",
]
