"""Find what prompt learning needs inside a transformers model: its word embeddings (reference §8.3)."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel


def _vocab_size(model: Any) -> int | None:
    cfg = model.config
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    return getattr(cfg, "vocab_size", None)


def find_word_embeddings(model: Any) -> Any:
    """The module PEFT embeds real tokens with (and initialises TEXT/SAMPLE_VOCAB prompts from).

    PEFT first tries `embeddings.word_embeddings` (BERT-style), then the first parameter of the first
    `PreTrainedModel` child whose leading dimension is the vocabulary size (Llama `model.embed_tokens`,
    GPT-2 `transformer.wte`, T5 `shared`).
    """
    try:
        return model.get_submodule("embeddings.word_embeddings")
    except AttributeError:
        pass
    backbone: Any = model
    for _, child in model.named_children():
        if isinstance(child, PreTrainedModel):
            backbone = child
            break
    vocab = _vocab_size(model)
    for name, param in backbone.named_parameters():
        if param.shape[0] == vocab:
            return backbone.get_submodule(name.removesuffix(".weight"))
    return model.get_input_embeddings()
