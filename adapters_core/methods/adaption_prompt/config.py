"""`AdaptionPromptConfig` (LLaMA-Adapter): PEFT's fields and defaults (peft/tuners/adaption_prompt/config.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...config import AdapterConfig, PeftType, register_config
from ...errors import AdapterConfigError

# model_type -> the attribute name of the attention modules PEFT wraps (TRANSFORMERS_MODEL_CONFIG).
SUPPORTED_TARGETS: dict[str, str] = {"llama": "self_attn", "mistral": "self_attn", "gpt2": "attn"}


@register_config
@dataclass
class AdaptionPromptConfig(AdapterConfig):
    """LLaMA-Adapter: `adapter_len` gated prompt rows attended by the last `adapter_layers` attention modules."""

    PEFT_TYPE: ClassVar[PeftType] = PeftType.ADAPTION_PROMPT
    REQUIRED_KEYS: ClassVar[tuple[str, ...]] = ("peft_type", "adapter_len", "adapter_layers")

    target_modules: str | None = None
    adapter_len: int | None = None
    adapter_layers: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("adapter_len", "adapter_layers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise AdapterConfigError(f"{name} must be a positive integer, got {value!r}.")
        if self.target_modules is not None and not isinstance(self.target_modules, str):
            raise AdapterConfigError(
                f"target_modules must be one attribute name such as 'self_attn', got {self.target_modules!r}."
            )
