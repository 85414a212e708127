"""`PrefixTuningConfig`: PEFT's fields, names and defaults (peft/tuners/prefix_tuning/config.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ...config import PeftType
from ...config_checks import MAX_WIDTH, PROMPT_LEARNING_NUMBERS, Number
from ...errors import AdapterConfigError
from ...prompt_learning.config import PromptLearningConfig


@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """Prefix tuning: `num_virtual_tokens` trainable key/value rows in front of every attention layer.

    Under grouped-query attention `token_dim` and `num_attention_heads` describe the key/value heads
    (reference §8.1).
    """

    PEFT_TYPE: ClassVar[str] = PeftType.PREFIX_TUNING
    NUMBERS: ClassVar[dict[str, Number]] = {
        **PROMPT_LEARNING_NUMBERS,
        "encoder_hidden_size": Number(int, 1, MAX_WIDTH, nullable=True),
    }

    init_weights: Literal["zero"] | None = None
    encoder_hidden_size: int | None = None
    prefix_projection: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_weights not in (None, "zero"):
            raise AdapterConfigError(f"init_weights must be null or 'zero', got {self.init_weights!r}.")
