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
from typing import Any

import peft
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from arch_configs import FAMILIES, Family

METHODS = ("LoRA", "DoRA", "AdaLoRA", "IA3", "prompt tuning", "P-tuning", "prefix tuning", "LLaMA-Adapter")
IMAGE_ROWS = {"vit": "ViT (image cls)", "segformer": "SegFormer (semantic seg)"}
NO_PIXELS = "refused: no pixel input yet (issue 15 item 3)"
NOT_IN_PEFT = "n/a: PEFT's LLaMA-Adapter supports llama, mistral and gpt2 only"

# Cells that are not "exact", with the reason the docs give. A refused cell's error message must contain the
# quoted part of its reason (see test_arch_matrix.py).
EXPECTED: dict[tuple[str, str], str] = {}


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
        lines.append(f"| {title} | " + " | ".join(cell(NO_PIXELS) for _ in METHODS) + " |")
    lines.append("")
    lines += [f"[{n}] {why}" for why, n in notes.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_table(), end="")
