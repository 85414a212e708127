"""Tiny image bases and PEFT adapters on them (the tests of multi/vision.py, the image routes and training).

The bases come from the project's factory (adapters_core/tiny.py: "vit", "segformer"). An adapter is made by
real PEFT, as PEFT's two vision guides make it (LoRA on the attention projections, the head in
modules_to_save), with every adapter tensor *and* its head copy perturbed: LoRA B starts at zero and the head
copy equals the base head, so an unperturbed adapter would prove nothing.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import peft
import torch
from tiny_models import perturb_adapter_weights
from torch import nn

from adapters_core.tiny import IMAGE_SIZE, tiny_model

HEADS = {"vit": "classifier", "segformer": "decode_head"}  # what PEFT's guides put in modules_to_save


def image_base(kind: str, num_labels: int = 3, seed: int = 0) -> Any:
    """The tiny `kind` base with a head of `num_labels`; the same encoder whatever `num_labels` (a head of
    another width on one shared base, as adapters trained for other label sets are)."""
    base = tiny_model(kind, seed)  # type: ignore[arg-type]
    if num_labels == base.config.num_labels:
        return base
    labels = {i: f"L{i}" for i in range(num_labels)}
    wide = tiny_model(kind, seed + 1, num_labels=num_labels, id2label=labels)  # type: ignore[arg-type]
    out_layer = ("classifier.", "decode_head.classifier.")  # the label-wide layer of each head
    shared = {k: v for k, v in base.state_dict().items() if not k.startswith(out_layer)}
    missing, _ = wide.load_state_dict(shared, strict=False)
    assert missing and all(k.startswith(out_layer) for k in missing), missing
    return wide.eval()


def peft_configs(kind: str) -> dict[str, Any]:
    """One PEFT config per method an image base serves, each with the guide's head in modules_to_save."""
    head = [HEADS[kind]]
    attn = ["q_proj", "v_proj"]
    return {
        "lora": peft.LoraConfig(r=4, lora_alpha=8, target_modules=attn, modules_to_save=head),
        "dora": peft.LoraConfig(r=2, lora_alpha=4, use_dora=True, target_modules=attn, modules_to_save=head),
        "ia3": peft.IA3Config(
            target_modules=["k_proj", "v_proj", "fc2"], feedforward_modules=["fc2"], modules_to_save=head
        ),
        "adalora": peft.AdaLoraConfig(
            init_r=4, target_r=2, total_step=10, target_modules=attn, modules_to_save=head
        ),
    }


@torch.no_grad()
def perturb_head(model: nn.Module, seed: int) -> None:
    """Move every modules_to_save copy (and BatchNorm statistics in it) away from the base head."""
    g = torch.Generator().manual_seed(seed + 100)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if ".modules_to_save." not in name or not t.dtype.is_floating_point:
            continue
        noise = torch.randn(t.shape, generator=g)
        t.copy_(t.abs() * (1 + 0.3 * noise).abs() + 0.1 if "running_var" in name else t + 0.3 * noise)


def make_peft_adapter(base: nn.Module, config: Any, out_dir: Path, seed: int = 0) -> Path:
    """Real PEFT makes `config`'s adapter on a copy of `base`, perturbed (module docstring), saved to
    `out_dir`."""
    model = peft.get_peft_model(copy.deepcopy(base), copy.deepcopy(config))
    perturb_adapter_weights(model, seed=seed)
    perturb_head(model, seed)
    model.save_pretrained(str(out_dir))
    return out_dir


def peft_oracle(base: nn.Module, adapter_dir: Path) -> Any:
    """PEFT's own model of a saved adapter, on a copy of `base` (eval mode)."""
    return peft.PeftModel.from_pretrained(copy.deepcopy(base), str(adapter_dir)).eval()


def pixels(rows: int, seed: int = 0) -> torch.Tensor:
    """(rows, 3, IMAGE_SIZE, IMAGE_SIZE) normalised-looking pixel values."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
