"""P-tuning's encoder (PEFT's `PromptEncoder`): training form MLP / LSTM, inference form the bare table."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ...prompt_learning.tuner import PromptEncoderBase
from .config import PromptEncoderConfig, PromptEncoderReparameterizationType

_MLP_LAYERS = 2  # PEFT's default encoder_num_layers; the MLP ignores other values (with a warning)


class PromptEncoder(PromptEncoderBase):
    """Training form, with `h = encoder_hidden_size`, `d = token_dim`, `T = total virtual tokens`:

    * MLP:  table = Linear(h,d) ∘ ReLU ∘ Linear(h,h) ∘ ReLU ∘ Linear(d,h) (embedding)       # (T, d)
    * LSTM: table = Linear(2h,d) ∘ ReLU ∘ Linear(2h,2h) ∘ BiLSTM(d -> h, encoder_num_layers) (embedding)

    Module names (`embedding`, `mlp_head`, `lstm_head`) are PEFT's, so PEFT encoder weights load here.
    Inference form: only `embedding` (T, d), which *is* the table.
    """

    def __init__(self, config: PromptEncoderConfig) -> None:
        super().__init__()
        assert config.token_dim is not None
        d, total = config.token_dim, config.total_virtual_tokens
        h = config.encoder_hidden_size or d
        self.encoder_type = PromptEncoderReparameterizationType(config.encoder_reparameterization_type)
        self.embedding = nn.Embedding(total, d)
        self._trainable = not config.inference_mode
        if not self._trainable:
            return
        if self.encoder_type == PromptEncoderReparameterizationType.LSTM:
            self.lstm_head = nn.LSTM(
                input_size=d,
                hidden_size=h,
                num_layers=config.encoder_num_layers,
                dropout=config.encoder_dropout,
                bidirectional=True,
                batch_first=True,
            )
            self.mlp_head = nn.Sequential(nn.Linear(2 * h, 2 * h), nn.ReLU(), nn.Linear(2 * h, d))
        else:
            if config.encoder_num_layers != _MLP_LAYERS:
                warnings.warn(
                    f"P-tuning MLP ignores encoder_num_layers={config.encoder_num_layers}: it always has "
                    "3 linear layers (as in PEFT).",
                    stacklevel=2,
                )
            self.mlp_head = nn.Sequential(
                nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, d)
            )

    @property
    def inference_form(self) -> bool:
        return not self._trainable

    def table(self) -> torch.Tensor:
        if not self._trainable:
            return self.embedding.weight
        rows = self.embedding.weight.unsqueeze(0)  # (1, T, d): the LSTM runs over the virtual tokens in order
        if self.encoder_type == PromptEncoderReparameterizationType.LSTM:
            rows = self.lstm_head(rows)[0]  # (1, T, 2h)
        return self.mlp_head(rows)[0]  # (T, d)
