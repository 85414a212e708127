"""Prompt tuning (PEFT `PROMPT_TUNING`): trainable virtual-token embeddings in front of the input."""

from .config import PromptTuningConfig, PromptTuningInit
from .encoder import PromptEmbedding
from .model import PromptTuningModel

__all__ = ["PromptEmbedding", "PromptTuningConfig", "PromptTuningInit", "PromptTuningModel"]
