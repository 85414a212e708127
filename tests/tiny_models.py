"""Tiny transformers models built from configs with fixed seeds (no downloads), and PEFT helpers.

The four bases of the parity tests: a Llama-style causal LM with grouped-query attention, GPT-2 (Conv1D),
BERT for sequence classification, and T5. Shapes follow ../shared/reference/peft-format.md's fixtures
(hidden 64, 2 layers, vocab 256).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

VOCAB = 256


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """Llama with GQA: 4 query heads, 2 key/value heads (head_dim 16), tied=False."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(cfg).eval()


def tiny_bert(seed: int = 0, num_labels: int = 3) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    return BertForSequenceClassification(cfg).eval()


def tiny_t5(seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = T5Config(
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
    )
    return T5ForConditionalGeneration(cfg).eval()


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
