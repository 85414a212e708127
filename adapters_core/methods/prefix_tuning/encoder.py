"""Prefix tuning's encoder (PEFT's `PrefixEncoder`): optional projection while training, bare table after."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...prompt_learning.tuner import PromptEncoderBase
from .config import PrefixTuningConfig


class PrefixEncoder(PromptEncoderBase):
    """Table (n, num_layers · 2 · token_dim): per layer the keys then the values of `n` prefix positions.

    * `prefix_projection=False`, or any inference form: `embedding` is the table.
    * training with `prefix_projection=True`: table = Linear(e, 2·L·d) ∘ Tanh ∘ Linear(d, e) (embedding (n, d)),
      `e = encoder_hidden_size`. Module names (`embedding`, `transform`) are PEFT's.
    """

    def __init__(self, config: PrefixTuningConfig) -> None:
        super().__init__()
        assert config.token_dim is not None and config.num_layers is not None
        n, d = config.num_virtual_tokens, config.token_dim
        assert n is not None
        width = config.num_layers * 2 * d
        self.projected = bool(config.prefix_projection and not config.inference_mode)
        if self.projected:
            hidden = config.encoder_hidden_size or d
            self.embedding = nn.Embedding(n, d)
            self.transform = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, width))
            if config.init_weights == "zero":
                last: Any = self.transform[-1]
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
        else:
            self.embedding = nn.Embedding(n, width)
            if config.init_weights == "zero":
                nn.init.zeros_(self.embedding.weight)

    @property
    def inference_form(self) -> bool:
        return not self.projected

    def table(self) -> torch.Tensor:
        if self.projected:
            return self.transform(self.embedding.weight)  # (n, 2·L·d)
        return self.embedding.weight
