"""Tiny bases of every architecture family the matrix covers (tests/adapters_core/test_arch_matrix*.py).

Each family is built from its own transformers config class with a fixed seed: 2 layers, hidden 32, 4 heads,
vocab 128, no dropout — small enough that the whole matrix runs in CI on 2 cores. `Family` also says how the
family is adapted: its task (the PEFT task type and head), the LoRA/IA3 target modules, and whether PEFT's
LLaMA-Adapter supports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import transformers as tf

VOCAB = 128
HIDDEN, HEADS, LAYERS, FFN = 32, 4, 2, 64
SPECIAL = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


@dataclass(frozen=True)
class Family:
    """One architecture family of the matrix.

    kind: "causal" (decoder-only LM), "seq2seq" (encoder-decoder LM) or "encoder" (sequence classifier).
    attn / ffn: module-name suffixes LoRA, DoRA, AdaLoRA and IA3 target (ffn = IA3's feed-forward modules).
    """

    name: str
    kind: str
    model_cls: str
    config_cls: str
    config: dict[str, Any]
    attn: list[str]
    ffn: list[str]
    llama_adapter: bool = False
    # Fields PEFT cannot read off this config (DistilBERT names its width `dim`): given to prompt configs.
    prompt_fields: dict[str, Any] = field(default_factory=dict)

    @property
    def task_type(self) -> str:
        return {"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "encoder": "SEQ_CLS"}[self.kind]

    def build(self, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        config = getattr(tf, self.config_cls)(**self.config)
        return getattr(tf, self.model_cls)(config).eval()


def _llama_like(**extra: Any) -> dict[str, Any]:
    return {
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
        **SPECIAL,
        **extra,
    }


def _bert_like(**extra: Any) -> dict[str, Any]:
    return {
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": FFN,
        "max_position_embeddings": 128,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "num_labels": 3,
        "pad_token_id": 0,
        **extra,
    }


QV, GATE = ["q_proj", "v_proj"], ["down_proj"]
_FAMILIES = [
    Family("llama", "causal", "LlamaForCausalLM", "LlamaConfig", _llama_like(), QV, GATE, llama_adapter=True),
    Family(
        "mistral",
        "causal",
        "MistralForCausalLM",
        "MistralConfig",
        _llama_like(sliding_window=4),
        QV,
        GATE,
        llama_adapter=True,
    ),
    Family(
        "mixtral",
        "causal",
        "MixtralForCausalLM",
        "MixtralConfig",
        _llama_like(num_local_experts=2, num_experts_per_tok=1, sliding_window=None),
        QV,
        [],
    ),
    Family("qwen2", "causal", "Qwen2ForCausalLM", "Qwen2Config", _llama_like(), QV, GATE),
    Family("qwen3", "causal", "Qwen3ForCausalLM", "Qwen3Config", _llama_like(head_dim=8), QV, GATE),
    Family("gemma", "causal", "GemmaForCausalLM", "GemmaConfig", _llama_like(head_dim=8), QV, GATE),
    Family(
        "gemma2",
        "causal",
        "Gemma2ForCausalLM",
        "Gemma2Config",
        # a window shorter than the prompts, so that sliding-window layers really cut keys off
        _llama_like(head_dim=8, sliding_window=4, final_logit_softcapping=5.0, attn_logit_softcapping=3.0),
        QV,
        GATE,
    ),
    Family(
        "gemma3",
        "causal",
        "Gemma3ForCausalLM",
        "Gemma3TextConfig",
        _llama_like(head_dim=8, sliding_window=4, layer_types=["sliding_attention", "full_attention"]),
        QV,
        GATE,
    ),
    Family("phi3", "causal", "Phi3ForCausalLM", "Phi3Config", _llama_like(), ["qkv_proj"], GATE),
    Family(
        "gpt2",
        "causal",
        "GPT2LMHeadModel",
        "GPT2Config",
        {
            "vocab_size": VOCAB,
            "n_embd": HIDDEN,
            "n_layer": LAYERS,
            "n_head": HEADS,
            "n_positions": 128,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            **SPECIAL,
        },
        ["c_attn"],
        ["c_proj"],  # attn.c_proj and mlp.c_proj: IA3 treats both as feed-forward here
        llama_adapter=True,
    ),
    Family(
        "gptj",
        "causal",
        "GPTJForCausalLM",
        "GPTJConfig",
        {
            "vocab_size": VOCAB,
            "n_embd": HIDDEN,
            "n_layer": LAYERS,
            "n_head": HEADS,
            "rotary_dim": 4,
            "n_positions": 128,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            **SPECIAL,
        },
        ["q_proj", "v_proj"],
        ["fc_out"],
    ),
    Family(
        "gpt_neox",
        "causal",
        "GPTNeoXForCausalLM",
        "GPTNeoXConfig",
        {
            "vocab_size": VOCAB,
            "hidden_size": HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "intermediate_size": FFN,
            "max_position_embeddings": 128,
            "hidden_dropout": 0.0,
            "attention_dropout": 0.0,
            **SPECIAL,
        },
        ["query_key_value"],
        ["dense_4h_to_h"],
    ),
    Family(
        "opt",
        "causal",
        "OPTForCausalLM",
        "OPTConfig",
        {
            "vocab_size": VOCAB,
            "hidden_size": HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "ffn_dim": FFN,
            "word_embed_proj_dim": HIDDEN,
            "max_position_embeddings": 128,
            "dropout": 0.0,
            "attention_dropout": 0.0,
            **SPECIAL,
        },
        QV,
        ["fc2"],
    ),
    Family(
        "falcon",
        "causal",
        "FalconForCausalLM",
        "FalconConfig",
        {
            "vocab_size": VOCAB,
            "hidden_size": HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "new_decoder_architecture": False,
            "multi_query": True,
            "parallel_attn": True,
            "bias": False,
            "hidden_dropout": 0.0,
            "attention_dropout": 0.0,
            **SPECIAL,
        },
        ["query_key_value"],
        ["dense_4h_to_h"],
    ),
    Family(
        "bloom",
        "causal",
        "BloomForCausalLM",
        "BloomConfig",
        {
            "vocab_size": VOCAB,
            "hidden_size": HIDDEN,
            "n_layer": LAYERS,
            "n_head": HEADS,
            "hidden_dropout": 0.0,
            "attention_dropout": 0.0,
            **SPECIAL,
        },
        ["query_key_value"],
        ["dense_4h_to_h"],
    ),
    Family(
        "t5",
        "seq2seq",
        "T5ForConditionalGeneration",
        "T5Config",
        {
            "vocab_size": VOCAB,
            "d_model": HIDDEN,
            "d_kv": 8,
            "d_ff": FFN,
            "num_layers": LAYERS,
            "num_decoder_layers": LAYERS,
            "num_heads": HEADS,
            "dropout_rate": 0.0,
            "decoder_start_token_id": 0,
            "pad_token_id": 0,
            "eos_token_id": 2,
        },
        ["q", "v"],
        ["wo"],
    ),
    Family(
        "mt5",
        "seq2seq",
        "MT5ForConditionalGeneration",
        "MT5Config",
        {
            "vocab_size": VOCAB,
            "d_model": HIDDEN,
            "d_kv": 8,
            "d_ff": FFN,
            "num_layers": LAYERS,
            "num_decoder_layers": LAYERS,
            "num_heads": HEADS,
            "dropout_rate": 0.0,
            "decoder_start_token_id": 0,
            "pad_token_id": 0,
            "eos_token_id": 2,
        },
        ["q", "v"],
        ["wo"],
    ),
    Family(
        "bart",
        "seq2seq",
        "BartForConditionalGeneration",
        "BartConfig",
        {
            "vocab_size": VOCAB,
            "d_model": HIDDEN,
            "encoder_layers": LAYERS,
            "decoder_layers": LAYERS,
            "encoder_attention_heads": HEADS,
            "decoder_attention_heads": HEADS,
            "encoder_ffn_dim": FFN,
            "decoder_ffn_dim": FFN,
            "max_position_embeddings": 128,
            "dropout": 0.0,
            "attention_dropout": 0.0,
            "activation_dropout": 0.0,
            "decoder_start_token_id": 2,
            "forced_eos_token_id": None,
            **SPECIAL,
        },
        QV,
        ["fc2"],
    ),
    Family(
        "bert",
        "encoder",
        "BertForSequenceClassification",
        "BertConfig",
        _bert_like(),
        ["query", "value"],
        ["output.dense"],
    ),
    Family(
        "roberta",
        "encoder",
        "RobertaForSequenceClassification",
        "RobertaConfig",
        _bert_like(pad_token_id=1, max_position_embeddings=130),
        ["query", "value"],
        ["output.dense"],
    ),
    Family(
        "xlm_roberta",
        "encoder",
        "XLMRobertaForSequenceClassification",
        "XLMRobertaConfig",
        _bert_like(pad_token_id=1, max_position_embeddings=130),
        ["query", "value"],
        ["output.dense"],
    ),
    Family(
        "deberta_v2",
        "encoder",
        "DebertaV2ForSequenceClassification",
        "DebertaV2Config",
        _bert_like(relative_attention=True, position_buckets=16, pos_att_type=["p2c", "c2p"]),
        ["query_proj", "value_proj"],
        ["output.dense"],
    ),
    Family(
        "distilbert",
        "encoder",
        "DistilBertForSequenceClassification",
        "DistilBertConfig",
        {
            "vocab_size": VOCAB,
            "dim": HIDDEN,
            "n_layers": LAYERS,
            "n_heads": HEADS,
            "hidden_dim": FFN,
            "max_position_embeddings": 128,
            "dropout": 0.0,
            "attention_dropout": 0.0,
            "seq_classif_dropout": 0.0,
            "num_labels": 3,
            "pad_token_id": 0,
        },
        ["q_lin", "v_lin"],
        ["lin2"],
        prompt_fields={"token_dim": HIDDEN, "num_attention_heads": HEADS, "num_layers": LAYERS},
    ),
]
FAMILIES: dict[str, Family] = {f.name: f for f in _FAMILIES}
