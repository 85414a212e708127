"""Image bases in the mixed batch: ViT-style classifiers and SegFormer-style segmenters, one adapter per row.

Pixels need little of their own. LoRA, DoRA, AdaLoRA and IA3 live in the encoder's `nn.Linear` layers, which
see patch tokens (B, N, H) exactly as a text encoder's layers see tokens, so the multi-adapter layers apply
them per row unchanged. Each adapter's head is a modules_to_save copy — ViT's `classifier` (a Linear on the
pooled token), SegFormer's whole `decode_head` (Linears, 1×1 convolutions and a BatchNorm, as in PEFT's
semantic-segmentation guide) — and runs as a per-row override (layers.py). Heads with different label counts
pad the narrower rows' logits with -inf along the label dim: (B, C) for classification, dim 1 of
(B, C, h, w) for segmentation; `split_label_logits` cuts each row back to its own C.

What an image base cannot take is a prompt-family adapter: prompt tuning, P-tuning and prefix tuning add
virtual *tokens* through the word embeddings, and LLaMA-Adapter targets decoder attention. An image model has
neither; PEFT 0.21 fails on them too (its prompt encoder looks the word embeddings up). They are refused when
parsed, with that reason.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import AdapterConfig
from ..errors import UnsupportedError
from ..registry import ServingForm, get_method, peft_type_name
from .context import ContextHolder
from .prompts import PromptStore


def takes_pixels(model: nn.Module) -> bool:
    """True for a base whose forward takes `pixel_values` (transformers' `main_input_name`)."""
    return getattr(model, "main_input_name", "input_ids") == "pixel_values"


def refuse_prompt_method(config: AdapterConfig, model: nn.Module) -> None:
    """`UnsupportedError` for a prompt-family adapter on an image base (module docstring)."""
    if get_method(config.peft_type).serving is ServingForm.PROMPT:
        raise UnsupportedError(
            f"{peft_type_name(config.peft_type)} adapters cannot run on the image model "
            f"{type(model).__name__}: they add virtual tokens through word embeddings (or adapt decoder "
            "attention), which an image model does not have; PEFT cannot run them on it either. Use LoRA, DoRA, "
            "AdaLoRA or IA3 (with the head in modules_to_save) on image bases."
        )


class ImagePromptStore(PromptStore):
    """The prompt store of an image base: never holds a prompt (they are refused at parse time), so every row
    runs the plain model forward. `PromptStore.__init__` is not run: it reads word embeddings and installs
    token hooks, which an image model does not have."""

    def __init__(self, model: Any, holder: ContextHolder) -> None:
        self.model = model
        self.kind = "image"
        self._holder = holder
        self.embed = None
        self.takes_positions = False
        self.slots = {}
        self._adaption = {}
        self._hooks = {}
        self.cache_heads = None
        self.position_embeddings = []

    def load(self, slot: int, tensors: Any, modules: dict[str, nn.Module]) -> None:
        raise UnsupportedError(f"{type(self.model).__name__} is an image model: it takes no prompt tables.")

    def check(self, tensors: Any) -> None:
        raise UnsupportedError(f"{type(self.model).__name__} is an image model: it takes no prompt tables.")


def split_label_logits(logits: torch.Tensor) -> list[torch.Tensor]:
    """(B, C_max) or (B, C_max, h, w) logits -> per row (C_i,) or (C_i, h, w): the -inf label channels that pad
    a narrower head to the batch's widest (module docstring) are cut off."""
    if logits.dim() not in (2, 4):
        raise ValueError(
            f"logits {tuple(logits.shape)} are neither (B, labels) nor (B, labels, h, w): the base is not an "
            "image classifier or a semantic segmenter."
        )
    per_label = logits.flatten(2) if logits.dim() == 4 else logits.unsqueeze(-1)  # (B, C_max, P)
    real = (per_label != float("-inf")).all(dim=-1)  # (B, C_max): a padded label is -inf at every pixel
    widths = (real * torch.arange(1, logits.shape[1] + 1, device=logits.device)).amax(dim=1).tolist()
    return [row[:w] for row, w in zip(logits, widths)]
