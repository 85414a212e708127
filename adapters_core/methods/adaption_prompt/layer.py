"""LLaMA-Adapter's attention term, added to the output of a wrapped attention module (reference §12.2-12.3).

With `Lp = adapter_len`, `H` query heads, `hd` head dim, `g` the scalar gate:

    Pk, Pv = k/v projections of the prompt (1, Lp, hidden), with their biases     # (B, H, Lp, hd) after GQA repeat
    q      = the module's query of the current tokens (RoPE applied for Llama)     # (B, H, q_len, hd)
    a      = g · softmax(q Pkᵀ / √hd, over the Lp prompt rows only, in float32)   # no mask, no RoPE on Pk
    out   += o_proj(a Pv) for Llama/Mistral, or a Pv for GPT-2 (no c_proj)

The arithmetic follows PEFT's `AdaptedAttention` / `AdaptedAttentionGPT` step by step (same op order and
dtype casts), so outputs agree to float rounding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class AdaptionPromptLayer(nn.Module):
    """One adapted attention module's parameters: `adaption_prompt` (1, Lp, hidden), `adaption_gate` (1,)."""

    def __init__(self, adapter_len: int, hidden: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        # N(0, 1) prompt (the official repo's nn.Embedding init) and a zero gate ("zero-init attention").
        self.adaption_prompt = nn.Parameter(
            torch.empty(1, adapter_len, hidden, dtype=dtype, device=device).normal_()
        )
        self.adaption_gate = nn.Parameter(torch.zeros(1, dtype=dtype, device=device))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _gated_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: torch.Tensor, hd: int
) -> torch.Tensor:
    """q (B, H, q_len, hd), k/v (B, H, Lp, hd) -> (B, q_len, H·hd)."""
    dtype = q.dtype
    scores = torch.matmul(q, k.transpose(2, 3).to(dtype)) / math.sqrt(hd)  # (B, H, q_len, Lp)
    scores = gate * F.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
    bsz, _, q_len, _ = q.shape
    return torch.matmul(scores, v).transpose(1, 2).reshape(bsz, q_len, -1)


def llama_adapter_output(
    attn: Any,
    layer: AdaptionPromptLayer,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """The adapter term of a Llama/Mistral attention module: (B, q_len, hidden)."""
    bsz, q_len, _ = hidden_states.shape
    prompt, hd = layer.adaption_prompt, attn.head_dim
    lp = prompt.shape[1]
    num_heads = attn.config.num_attention_heads
    factor = attn.k_proj.in_features // attn.k_proj.out_features  # query heads per key/value head (GQA)
    key, value = attn.k_proj(prompt), attn.v_proj(prompt)  # (1, Lp, H_kv·hd)
    k = key.view(1, lp, num_heads // factor, hd).repeat(bsz, 1, 1, 1).transpose(1, 2)  # (B, H_kv, Lp, hd)
    v = value.view(1, lp, num_heads // factor, hd).repeat(bsz, 1, 1, 1).transpose(1, 2)
    k = torch.repeat_interleave(k, repeats=factor, dim=1)  # (B, H, Lp, hd)
    v = torch.repeat_interleave(v, repeats=factor, dim=1)
    q = attn.q_proj(hidden_states).view(bsz, q_len, num_heads, hd).transpose(1, 2)  # (B, H, q_len, hd)
    cos, sin = position_embeddings
    q = q * cos.unsqueeze(1) + _rotate_half(q) * sin.unsqueeze(1)  # RoPE on the query only
    return attn.o_proj(_gated_attention(q, k, v, layer.adaption_gate, hd))


def gpt2_adapter_output(attn: Any, layer: AdaptionPromptLayer, hidden_states: torch.Tensor) -> torch.Tensor:
    """The adapter term of a GPT-2 attention module: (B, q_len, hidden); c_attn's bias included, no c_proj."""
    bsz, q_len, embed_dim = hidden_states.shape
    prompt, hd = layer.adaption_prompt, attn.head_dim
    lp = prompt.shape[1]
    num_heads = attn.config.num_attention_heads
    _, key, value = attn.c_attn(prompt).split(embed_dim, dim=2)  # (1, Lp, hidden) each
    k = key.view(1, lp, num_heads, hd).repeat(bsz, 1, 1, 1).transpose(1, 2)  # (B, H, Lp, hd)
    v = value.view(1, lp, num_heads, hd).repeat(bsz, 1, 1, 1).transpose(1, 2)
    q, _, _ = attn.c_attn(hidden_states).split(attn.split_size, dim=2)
    q = q.view(bsz, q_len, -1, hd).transpose(1, 2)  # (B, H, q_len, hd)
    return _gated_attention(q, k, v, layer.adaption_gate, hd)
