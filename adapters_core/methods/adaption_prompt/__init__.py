"""LLaMA-Adapter (PEFT `ADAPTION_PROMPT`): gated prompt attention in the top attention layers."""

from ...config import PeftType
from ...registry import MethodSpec, register_method
from .config import AdaptionPromptConfig
from .model import AdaptionPromptModel

register_method(MethodSpec(PeftType.ADAPTION_PROMPT, AdaptionPromptConfig, AdaptionPromptModel))

__all__ = ["AdaptionPromptConfig", "AdaptionPromptModel"]
