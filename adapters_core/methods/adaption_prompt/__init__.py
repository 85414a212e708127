"""LLaMA-Adapter (PEFT `ADAPTION_PROMPT`): gated prompt attention in the top attention layers."""

from .config import AdaptionPromptConfig
from .model import AdaptionPromptModel

__all__ = ["AdaptionPromptConfig", "AdaptionPromptModel"]
