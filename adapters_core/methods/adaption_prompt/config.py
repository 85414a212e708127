"""`AdaptionPromptConfig` (LLaMA-Adapter): PEFT's fields and defaults (peft/tuners/adaption_prompt/config.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...config import AdapterConfig, PeftType
from ...config_checks import MAX_LAYERS, MAX_VIRTUAL_TOKENS, Number
from ...errors import AdapterConfigError

# model_type -> the attribute name of the attention modules PEFT wraps (TRANSFORMERS_MODEL_CONFIG).
SUPPORTED_TARGETS: dict[str, str] = {"llama": "self_attn", "mistral": "self_attn", "gpt2": "attn"}


@dataclass
class AdaptionPromptConfig(AdapterConfig):
    """LLaMA-Adapter: `adapter_len` gated prompt rows attended by the last `adapter_layers` attention modules."""

    PEFT_TYPE: ClassVar[str] = PeftType.ADAPTION_PROMPT
    REQUIRED_KEYS: ClassVar[tuple[str, ...]] = ("peft_type", "adapter_len", "adapter_layers")
    NUMBERS: ClassVar[dict[str, Number]] = {
        "adapter_len": Number(int, 1, MAX_VIRTUAL_TOKENS, nullable=True, hint="set e.g. adapter_len=10"),
        "adapter_layers": Number(int, 1, MAX_LAYERS, nullable=True, hint="set e.g. adapter_layers=30"),
    }

    target_modules: str | None = None
    adapter_len: int | None = None
    adapter_layers: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_modules is not None and not isinstance(self.target_modules, str):
            raise AdapterConfigError(
                f"target_modules must be one attribute name such as 'self_attn', got {self.target_modules!r}."
            )
