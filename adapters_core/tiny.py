"""Tiny transformers models built from configs with a fixed seed: no download, ready in milliseconds.

The one factory of the project's tiny bases: the tests' four (tests/tiny_models.py), the examples' bases
(examples/make_tiny_base.py), the demos' (demo/chat.py, demo/sentiment.py) and the benchmark's
(bench/bench_multi_adapter.py). It lives in the library, not under tests/, because the demo, the examples
and the benchmark run without the tests on their path. A base is its kind and a few config numbers; the
defaults are the tests' shapes (hidden 64, 2 layers, vocab 256, ../shared/reference/peft-format.md):

    model = tiny_model("llama")                                   # GQA: 4 query heads, 2 key/value heads
    model = tiny_model("llama", seed=1, vocab_size=2048, hidden_size=512, num_hidden_layers=4)
    model = tiny_model("bert", num_labels=2, id2label={0: "negative", 1: "positive"})
    model = tiny_model("vit", num_labels=4)                       # 32×32 RGB images, 8×8 patches
    model = tiny_model("segformer")                               # 32×32 images -> (3, 8, 8) label logits

The same kind, seed and numbers always give the same weights (the seed is set right before the model is
built, and building a config draws no random numbers).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    T5Config,
    T5ForConditionalGeneration,
    ViTConfig,
    ViTForImageClassification,
)

TinyKind = Literal["llama", "gpt2", "bert", "t5", "vit", "segformer"]
IMAGE_SIZE = 32  # the image bases' input side (their image processors resize to it)
VOCAB = 256
_SPECIAL = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
# What the image bases share: RGB inputs, no dropout, three labels.
_IMAGE = {"num_channels": 3, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "num_labels": 3}

# kind -> (config class, model class, the tests' config numbers); callers override any of them.
_KINDS: dict[str, tuple[type[PretrainedConfig], type[PreTrainedModel], dict[str, Any]]] = {
    "llama": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            tie_word_embeddings=False,
            **_SPECIAL,
        ),
    ),
    "gpt2": (
        GPT2Config,
        GPT2LMHeadModel,
        dict(
            vocab_size=VOCAB,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=128,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **_SPECIAL,
        ),
    ),
    "bert": (
        BertConfig,
        BertForSequenceClassification,
        dict(
            vocab_size=VOCAB,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=128,
            num_labels=3,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            pad_token_id=0,
        ),
    ),
    "t5": (
        T5Config,
        T5ForConditionalGeneration,
        dict(
            vocab_size=VOCAB,
            d_model=64,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            dropout_rate=0.0,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        ),
    ),
    # Image bases (multi/vision.py): a ViT classifier and a two-stage SegFormer (PEFT's two vision guides).
    "vit": (
        ViTConfig,
        ViTForImageClassification,
        dict(
            image_size=IMAGE_SIZE,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            **_IMAGE,
        ),
    ),
    "segformer": (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        dict(
            num_encoder_blocks=2,
            depths=[1, 1],
            sr_ratios=[2, 1],
            hidden_sizes=[16, 32],
            patch_sizes=[7, 3],
            strides=[4, 2],
            num_attention_heads=[1, 2],
            mlp_ratios=[2, 2],
            decoder_hidden_size=32,
            classifier_dropout_prob=0.0,
            drop_path_rate=0.0,
            **_IMAGE,
        ),
    ),
}


def tiny_config(kind: TinyKind, **overrides: Any) -> PretrainedConfig:
    """The config of a tiny `kind` base: the tests' numbers, with `overrides` (any config field; None
    unsets a default, e.g. `pad_token_id=None`)."""
    if kind not in _KINDS:
        raise ValueError(f"unknown tiny model kind {kind!r}; choose one of {sorted(_KINDS)}")
    config_class, _, defaults = _KINDS[kind]
    return config_class(**{**defaults, **overrides})


def tiny_model(kind: TinyKind, seed: int = 0, **overrides: Any) -> Any:
    """A freshly initialised tiny `kind` base (eval mode), the same weights for the same arguments."""
    config = tiny_config(kind, **overrides)
    model_class = _KINDS[kind][1]
    torch.manual_seed(seed)
    return model_class(config).eval()


def tiny_image_processor(kind: Literal["vit", "segformer"]) -> Any:
    """The image processor saved with a tiny image base: resizes to IMAGE_SIZE², rescales and normalises
    (transformers' own ViT / SegFormer processors; `AutoImageProcessor.from_pretrained` reads it back)."""
    from transformers import SegformerImageProcessor, ViTImageProcessor

    processors = {"vit": ViTImageProcessor, "segformer": SegformerImageProcessor}
    if kind not in processors:
        raise ValueError(f"{kind!r} is not an image base; choose vit or segformer")
    return processors[kind](size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
