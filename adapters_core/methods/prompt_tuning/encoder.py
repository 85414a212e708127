"""Prompt tuning's encoder: the table itself (PEFT's `PromptEmbedding`), with PEFT's three init modes."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...prompt_learning.tuner import PromptEncoderBase
from .config import PromptTuningConfig, PromptTuningInit


def text_init_ids(config: PromptTuningConfig, total: int) -> list[int]:
    """Token ids of `prompt_tuning_init_text`, truncated or repeated to `total` rows (as PEFT does)."""
    from transformers import AutoTokenizer

    kwargs = dict(config.tokenizer_kwargs or {})
    kwargs.pop("trust_remote_code", None)  # a checkpoint must not be able to run code
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_name_or_path, **kwargs)
    ids = list(tokenizer(config.prompt_tuning_init_text)["input_ids"])
    if not ids:
        raise ValueError("prompt_tuning_init_text tokenizes to no tokens; give a non-empty text.")
    if len(ids) < total:
        ids = ids * math.ceil(total / len(ids))
    return ids[:total]


class PromptEmbedding(PromptEncoderBase):
    """`embedding`: (n · num_transformer_submodules, token_dim), used as is (training and inference alike)."""

    def __init__(self, config: PromptTuningConfig, word_embeddings: Any) -> None:
        super().__init__()
        total = config.total_virtual_tokens
        assert config.token_dim is not None
        self.embedding = nn.Embedding(total, config.token_dim)  # RANDOM: N(0, 1)
        if config.inference_mode or config.prompt_tuning_init == PromptTuningInit.RANDOM:
            return
        weight = word_embeddings.weight
        if config.prompt_tuning_init == PromptTuningInit.SAMPLE_VOCAB:
            ids = torch.randint(0, weight.shape[0], (total,), dtype=torch.long)
        else:
            ids = torch.tensor(text_init_ids(config, total), dtype=torch.long)
        with torch.no_grad():
            rows = word_embeddings(ids.to(weight.device)).detach().clone().float()
        self.embedding.weight = nn.Parameter(rows)
