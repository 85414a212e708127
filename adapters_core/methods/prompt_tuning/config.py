"""`PromptTuningConfig`: PEFT's fields, names and defaults (peft/tuners/prompt_tuning/config.py)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

from ...config import PeftType
from ...config_checks import PROMPT_LEARNING_NUMBERS, Number
from ...errors import AdapterConfigError
from ...prompt_learning.config import PromptLearningConfig


class PromptTuningInit(enum.StrEnum):
    """How a new (trainable) prompt table is initialised; never used when loading a saved adapter."""

    TEXT = "TEXT"
    SAMPLE_VOCAB = "SAMPLE_VOCAB"
    RANDOM = "RANDOM"


@dataclass
class PromptTuningConfig(PromptLearningConfig):
    """Prompt tuning: `num_virtual_tokens` trainable embedding rows prepended to the input."""

    PEFT_TYPE: ClassVar[str] = PeftType.PROMPT_TUNING
    NUMBERS: ClassVar[dict[str, Number]] = {
        **PROMPT_LEARNING_NUMBERS,
    }

    prompt_tuning_init: PromptTuningInit | str = PromptTuningInit.RANDOM
    prompt_tuning_init_text: str | None = None
    tokenizer_name_or_path: str | None = None
    tokenizer_kwargs: dict | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            self.prompt_tuning_init = PromptTuningInit(
                getattr(self.prompt_tuning_init, "value", self.prompt_tuning_init)
            )
        except ValueError:
            raise AdapterConfigError(
                f"prompt_tuning_init {self.prompt_tuning_init!r} is not one of "
                f"{[i.value for i in PromptTuningInit]}."
            ) from None
        text_init = self.prompt_tuning_init == PromptTuningInit.TEXT
        if text_init and not self.tokenizer_name_or_path:
            raise AdapterConfigError(
                "prompt_tuning_init='TEXT' tokenizes prompt_tuning_init_text, so it needs a tokenizer: set "
                "tokenizer_name_or_path (a local directory or Hub id), or use prompt_tuning_init='RANDOM'."
            )
        if text_init and self.prompt_tuning_init_text is None:
            raise AdapterConfigError(
                "prompt_tuning_init='TEXT' needs prompt_tuning_init_text (the words whose embeddings start the "
                "prompt), or use prompt_tuning_init='RANDOM'."
            )
        if self.tokenizer_kwargs and not text_init:
            raise AdapterConfigError(
                "tokenizer_kwargs is only used with prompt_tuning_init='TEXT'; remove it."
            )
