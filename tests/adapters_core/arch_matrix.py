"""The architecture matrix: every family of tests/arch_configs.py × every method PEFT supports there.

Per family, real PEFT creates one adapter of each method (`method_configs`) with perturbed weights (LoRA B starts
at zero and IA3 at one, so an unperturbed adapter proves nothing) and saves it; one `MultiAdapterModel` loads
them all. `EXPECTED` says, per cell, "exact" or why the cell is refused; the test checks every cell against it
and `render_table()` turns it into docs/architectures.md, so the page cannot drift from what the tests prove.

    .venv/bin/python tests/adapters_core/arch_matrix.py     # prints the table (the docs page's body)
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace
from typing import Any

import peft
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from arch_configs import FAMILIES, Family

METHODS = ("LoRA", "DoRA", "AdaLoRA", "IA3", "prompt tuning", "P-tuning", "prefix tuning", "LLaMA-Adapter")
NOT_IN_PEFT = "n/a: PEFT's LLaMA-Adapter supports llama, mistral and gpt2 only"
IMAGE_ROWS = {"vit": "ViT (image cls)", "segformer": "SegFormer (semantic seg)"}
NO_WORD_EMBEDDINGS = (
    'refused: virtual tokens need word embeddings, which an image model lacks ("cannot run on the image model"); '
    "PEFT cannot run them either"
)
# Image bases (tests/adapters_core/test_vision_parity.py, the oracle PEFT): every row's logits, (C,) or the
# (C, h, w) label logits, with heads of different label counts in one batch.
IMAGE_EXPECTED: dict[str, str] = {
    "LoRA": "exact",
    "DoRA": "exact",
    "AdaLoRA": "exact",
    "IA3": "exact",
    "prompt tuning": NO_WORD_EMBEDDINGS,
    "P-tuning": NO_WORD_EMBEDDINGS,
    "prefix tuning": NO_WORD_EMBEDDINGS,
    "LLaMA-Adapter": NOT_IN_PEFT,
}

NO_CACHE = (
    'refused: the model\'s self-attention takes no KV cache ("has no attention module that accepts one"); '
    "PEFT cannot run it either"
)
MULTI_QUERY = (
    "refused: multi-query attention caches one key/value head, PEFT sizes the prefix by num_attention_heads "
    '("this model caches"), so PEFT cannot run it either'
)
HAND_WRITTEN = (
    "exact: against a hand-written forward (prefix after the row's positions, transformers-4 semantics): PEFT "
    "0.21 cannot run prefix tuning on encoders with transformers 5"
)
# Cells that are not plain "exact" (PEFT the oracle), with the reason the docs give. A refused cell's error
# message must contain the quoted part of its reason (see test_arch_matrix.py).
EXPECTED: dict[tuple[str, str], str] = {
    ("falcon", "prefix tuning"): MULTI_QUERY,
    ("bert", "prefix tuning"): HAND_WRITTEN,
    ("roberta", "prefix tuning"): HAND_WRITTEN,
    ("xlm_roberta", "prefix tuning"): HAND_WRITTEN,
    ("deberta_v2", "prefix tuning"): NO_CACHE,
    ("distilbert", "prefix tuning"): NO_CACHE,
}


def expected(family: str, method: str) -> str:
    """ "exact", "refused: …" or "n/a: …" for one cell."""
    fam = FAMILIES[family]
    if method == "LLaMA-Adapter" and not fam.llama_adapter:
        return NOT_IN_PEFT
    return EXPECTED.get((family, method), "exact")


def method_configs(fam: Family) -> dict[str, Any]:
    """One PEFT config per method PEFT supports on `fam` (keys are the METHODS names)."""
    targets = fam.attn + fam.ffn
    cfgs: dict[str, Any] = {
        "LoRA": peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets),
        "DoRA": peft.LoraConfig(r=2, lora_alpha=4, use_dora=True, target_modules=fam.attn),
        "AdaLoRA": peft.AdaLoraConfig(
            init_r=4, target_r=2, lora_alpha=8, total_step=10, target_modules=fam.attn
        ),
        "IA3": peft.IA3Config(target_modules=targets, feedforward_modules=fam.ffn),
        "prompt tuning": peft.PromptTuningConfig(num_virtual_tokens=3),
        "P-tuning": peft.PromptEncoderConfig(num_virtual_tokens=2, encoder_hidden_size=16),
        "prefix tuning": peft.PrefixTuningConfig(num_virtual_tokens=4),
    }
    if fam.llama_adapter:
        cfgs["LLaMA-Adapter"] = peft.AdaptionPromptConfig(adapter_len=3, adapter_layers=1)
    for cfg in cfgs.values():
        cfg.task_type = fam.task_type
        if isinstance(cfg, peft.PromptLearningConfig):
            for key, value in fam.prompt_fields.items():
                setattr(cfg, key, value)
    return cfgs


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int) -> None:
    """Adapter tensors get random values; saved head copies (modules_to_save) move away from the base."""
    g = torch.Generator().manual_seed(seed)
    markers = ("lora_", "ia3_l", "prompt_encoder", "adaption_prompt", "adaption_gate", "prompt_embeddings")
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if "modules_to_save" in name:
            p.add_(0.5 * noise)
        elif "ia3_l" in name or "lora_magnitude_vector" in name:
            p.mul_(1.0 + 0.3 * noise)
        elif "adaption_gate" in name:
            p.copy_(0.5 + 0.3 * noise)
        elif any(m in name for m in markers):
            p.copy_(0.3 * noise)


class EncoderPrefixForward(torch.nn.Module):
    """BERT / RoBERTa sequence classification with a key/value prefix in every self-attention, written out by
    hand (the oracle where PEFT cannot run): real tokens numbered after the prefix (BERT from n, RoBERTa from
    padding_idx + 1 + n), [CLS] classified by the model's (adapter's) head. One unpadded row at a time."""

    def __init__(self, model: Any, table: torch.Tensor, n: int) -> None:
        super().__init__()
        self.model, self.table, self.n = model, table, n

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        model, n = self.model, self.n
        cfg, base = model.config, model.base_model
        length = input_ids.shape[1]
        heads = cfg.num_attention_heads
        hd = cfg.hidden_size // heads
        kv = self.table.view(n, 2 * cfg.num_hidden_layers, heads, hd).permute(1, 2, 0, 3)  # (2L, H, n, hd)
        start = n + (cfg.pad_token_id + 1 if cfg.model_type in ("roberta", "xlm-roberta") else 0)
        emb = base.embeddings
        x = (
            emb.word_embeddings(input_ids)
            + emb.position_embeddings(torch.arange(start, start + length))[None]
        )
        x = emb.LayerNorm(x + emb.token_type_embeddings.weight[0])

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(1, -1, heads, hd).transpose(1, 2)  # (1, H, T, hd)

        for i, layer in enumerate(base.encoder.layer):
            sa = layer.attention.self
            k = torch.cat([kv[2 * i][None], split(sa.key(x))], dim=2)
            v = torch.cat([kv[2 * i + 1][None], split(sa.value(x))], dim=2)
            a = ((split(sa.query(x)) @ k.transpose(-1, -2) / hd**0.5).softmax(-1) @ v).transpose(1, 2)
            x = layer.attention.output.LayerNorm(layer.attention.output.dense(a.reshape(1, length, -1)) + x)
            x = layer.output.LayerNorm(layer.output.dense(layer.intermediate(x)) + x)
        pooled = base.pooler(x) if getattr(base, "pooler", None) is not None else x
        return SimpleNamespace(logits=model.classifier(pooled))


def render_table() -> str:
    """The family × method table of docs/architectures.md (markdown)."""
    lines = ["| family | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    notes: dict[str, int] = {}

    def cell(text: str) -> str:
        if text == "exact":
            return "exact"
        verdict, _, why = text.partition(": ")
        number = notes.setdefault(why, len(notes) + 1)
        return f"{verdict} [{number}]"

    for name, fam in FAMILIES.items():
        row = [cell(expected(name, m)) for m in METHODS]
        lines.append(f"| {name} ({fam.model_cls}) | " + " | ".join(row) + " |")
    for title in IMAGE_ROWS.values():
        lines.append(f"| {title} | " + " | ".join(cell(IMAGE_EXPECTED[m]) for m in METHODS) + " |")
    lines.append("")
    lines += [f"[{n}] {why}" for why, n in notes.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_table(), end="")
