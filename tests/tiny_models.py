"""The tests' tiny bases and PEFT helpers (no downloads).

The four bases of the parity tests — a Llama-style causal LM with grouped-query attention, GPT-2 (Conv1D),
BERT for sequence classification, and T5 — come from the project's one factory, adapters_core/tiny.py
(shapes of ../shared/reference/peft-format.md's fixtures: hidden 64, 2 layers, vocab 256).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from transformers import (
    BertForSequenceClassification,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    T5ForConditionalGeneration,
)

from adapters_core.tiny import VOCAB, tiny_model


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """Llama with GQA: 4 query heads, 2 key/value heads (head_dim 16), tied=False."""
    return cast(LlamaForCausalLM, tiny_model("llama", seed))


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    return cast(GPT2LMHeadModel, tiny_model("gpt2", seed))


def tiny_bert(seed: int = 0, num_labels: int = 3) -> BertForSequenceClassification:
    return cast(BertForSequenceClassification, tiny_model("bert", seed, num_labels=num_labels))


def tiny_t5(seed: int = 0) -> T5ForConditionalGeneration:
    return cast(T5ForConditionalGeneration, tiny_model("t5", seed))


BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert, "t5": tiny_t5}


def batch(model_kind: str, seed: int = 0, rows: int = 3, length: int = 8) -> dict[str, torch.Tensor]:
    """A padded batch: row 0 full length, the others right-padded (left-padded for causal LMs) with a mask.

    Causal LMs get left padding (what generation uses); BERT and T5 get right padding.
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (rows, length), generator=g)
    mask = torch.ones(rows, length, dtype=torch.long)
    for r in range(1, rows):
        pad = min(r * 2, length - 2)
        if model_kind in ("llama", "gpt2"):
            mask[r, :pad] = 0
            ids[r, :pad] = 0
        else:
            mask[r, length - pad :] = 0
            ids[r, length - pad :] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if model_kind == "t5":
        dec = torch.randint(3, VOCAB, (rows, 5), generator=g)
        dec[:, 0] = 0
        out["decoder_input_ids"] = dec
    return out


@torch.no_grad()
def perturb_adapter_weights(model: nn.Module, seed: int = 0, scale: float = 0.3) -> int:
    """Give every adapter parameter of a PEFT (or Swapyard) model non-trivial random values.

    LoRA B starts at zero and IA3 vectors at one, so an unperturbed adapter proves nothing. IA3 vectors
    become 1 + noise, DoRA magnitudes keep their sign and get scaled, the rest becomes noise · `scale`.
    Returns how many tensors were changed.
    """
    g = torch.Generator().manual_seed(seed)
    markers = ("lora_", "ia3_l", "prompt_encoder", "adaption_prompt", "adaption_gate", "prompt_embeddings")
    changed = 0
    for name, p in model.named_parameters():
        if not any(m in name for m in markers):
            continue
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype)
        if "ia3_l" in name or "lora_magnitude_vector" in name:
            p.mul_(1.0 + scale * noise)
        elif "adaption_gate" in name:
            p.copy_(0.5 + scale * noise)
        else:
            p.copy_(scale * noise)
        changed += 1
    assert changed > 0, "no adapter parameters found to perturb"
    return changed


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}"
    return float((a.float() - b.float()).abs().max())
