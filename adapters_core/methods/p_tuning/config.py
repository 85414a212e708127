"""`PromptEncoderConfig` (P-tuning): PEFT's fields, names and defaults (peft/tuners/p_tuning/config.py)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

from ...config import PeftType
from ...config_checks import MAX_LAYERS, MAX_WIDTH, PROMPT_LEARNING_NUMBERS, Number
from ...errors import AdapterConfigError
from ...prompt_learning.config import PromptLearningConfig


class PromptEncoderReparameterizationType(enum.StrEnum):
    """The network that turns P-tuning's embedding rows into prompts while training."""

    MLP = "MLP"
    LSTM = "LSTM"


@dataclass
class PromptEncoderConfig(PromptLearningConfig):
    """P-tuning: virtual tokens produced by a small MLP or bidirectional LSTM over trainable embeddings."""

    PEFT_TYPE: ClassVar[str] = PeftType.P_TUNING
    NUMBERS: ClassVar[dict[str, Number]] = {
        **PROMPT_LEARNING_NUMBERS,
        "encoder_hidden_size": Number(int, 1, MAX_WIDTH, nullable=True),
        "encoder_num_layers": Number(int, 1, MAX_LAYERS),
        "encoder_dropout": Number(float, 0, 1, high_open=True),
    }

    encoder_reparameterization_type: PromptEncoderReparameterizationType | str = (
        PromptEncoderReparameterizationType.MLP
    )
    encoder_hidden_size: int | None = None
    encoder_num_layers: int = 2
    encoder_dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        kind = getattr(self.encoder_reparameterization_type, "value", self.encoder_reparameterization_type)
        try:
            self.encoder_reparameterization_type = PromptEncoderReparameterizationType(kind)
        except ValueError:
            raise AdapterConfigError(
                f"encoder_reparameterization_type {kind!r} is not one of "
                f"{[t.value for t in PromptEncoderReparameterizationType]}; MLP is recommended."
            ) from None
