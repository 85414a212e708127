"""LoRA on `nn.Conv1d/2d/3d` as PEFT does it: same live layout and saved keys, PEFT's outputs, merge == unmerged.

Bases: a tiny conv net (1-D, 2-D with a strided 3×3 and a dilated 3×3, grouped, 1×1, 3-D) and a tiny
SegFormer (the seed's semantic-segmentation guide), whose patch embeddings and fuse layer are Conv2d.
"""

from __future__ import annotations

import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file
from tiny_models import max_abs_diff, perturb_adapter_weights
from torch import nn

import adapters_core
from adapters_core import AdapterConfig, AdapterModel, UnsupportedError, get_adapter_model
from adapters_core.multi.parsed import parse_adapter
from adapters_core.weights_io import load_adapter_weights


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2, bias=False)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.pointwise = nn.Conv2d(8, 6, 1)
        self.c3 = nn.Conv3d(6, 4, (1, 3, 3), padding=(0, 1, 1))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 4, 16)
        h = torch.relu(self.c1(x))  # (B, 8, 16)
        h = h.unsqueeze(-1).expand(-1, -1, -1, 16)  # (B, 8, 16, 16)
        h = torch.relu(self.c2(h))  # (B, 8, 8, 8)
        h = torch.relu(self.dilated(h) + self.grouped(h))
        h = self.pointwise(h).unsqueeze(2)  # (B, 6, 1, 8, 8)
        h = self.c3(h)  # (B, 4, 1, 8, 8)
        return self.head(h.mean(dim=(2, 3, 4)))


def conv_net(seed: int = 0) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet().eval()


CONV_TARGETS = ["c1", "c2", "grouped", "pointwise", "c3"]  # PEFT 0.21 fails on dilated convs: tested apart
X = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(5))


def _peft_conv(path: str, **options) -> tuple[nn.Module, torch.Tensor]:
    """PEFT's adapter (perturbed B, so every layer changes the output), saved; its output reloaded."""
    model = peft.get_peft_model(
        conv_net(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=CONV_TARGETS, **options)
    )
    perturb_adapter_weights(model)
    model.save_pretrained(path)
    reference = peft.PeftModel.from_pretrained(conv_net(), path).eval()
    with torch.no_grad():
        want = reference(X)
        assert max_abs_diff(want, conv_net()(X)) > 1e-3
    return reference, want


@pytest.mark.parametrize("lora_bias", [False, True])
def test_peft_conv_adapter_gives_peft_outputs(lora_bias: bool, tmp_path) -> None:
    _, want = _peft_conv(str(tmp_path), lora_bias=lora_bias)
    ours = AdapterModel.from_pretrained(conv_net(), str(tmp_path))
    with torch.no_grad():
        assert max_abs_diff(ours(X), want) < 1e-5


def test_same_layout_and_keys_and_peft_loads_ours(tmp_path) -> None:
    config = dict(r=4, lora_alpha=8, target_modules=CONV_TARGETS)
    theirs = peft.get_peft_model(conv_net(), peft.LoraConfig(**config))
    ours = get_adapter_model(conv_net(), adapters_core.LoraConfig(**config))
    shapes = {n: tuple(p.shape) for n, p in theirs.named_parameters()}
    assert {n: tuple(p.shape) for n, p in ours.named_parameters()} == shapes
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == {
        n for n, p in theirs.named_parameters() if p.requires_grad
    }
    perturb_adapter_weights(ours)
    ours.save_pretrained(str(tmp_path))
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert "base_model.model.c2.lora_A.weight" in saved and saved[
        "base_model.model.c2.lora_A.weight"
    ].shape == (4, 8, 3, 3)
    assert saved["base_model.model.grouped.lora_B.weight"].shape == (8, 2, 1, 1)
    reloaded = peft.PeftModel.from_pretrained(conv_net(), str(tmp_path)).eval()
    with torch.no_grad():
        assert max_abs_diff(reloaded(X), ours(X)) < 1e-5


def test_merge_equals_unmerged_and_peft_merge(tmp_path) -> None:
    targets = [t for t in CONV_TARGETS if t != "grouped"]  # PEFT cannot merge grouped convs either
    model = peft.get_peft_model(conv_net(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    perturb_adapter_weights(model)
    model.save_pretrained(str(tmp_path))
    with torch.no_grad():
        peft_merged = peft.PeftModel.from_pretrained(conv_net(), str(tmp_path)).merge_and_unload()(X)
        ours = AdapterModel.from_pretrained(conv_net(), str(tmp_path))
        unmerged = ours(X)
        ours.merge_adapter()
        assert max_abs_diff(ours(X), unmerged) < 1e-5
        ours.unmerge_adapter()
        assert max_abs_diff(ours(X), unmerged) < 1e-6
        plain = ours.merge_and_unload()
        assert not any(isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer) for m in plain.modules())
        assert max_abs_diff(plain(X), peft_merged) < 1e-5


def test_dilated_conv_merged_equals_unmerged() -> None:
    ours = get_adapter_model(conv_net(), adapters_core.LoraConfig(r=4, target_modules=["dilated", "c2"]))
    perturb_adapter_weights(ours)
    ours.eval()
    with torch.no_grad():
        unmerged = ours(X)
        assert max_abs_diff(unmerged, conv_net()(X)) > 1e-3
        ours.merge_adapter()
        assert max_abs_diff(ours(X), unmerged) < 1e-5


def test_grouped_conv_refuses_to_merge_and_rank_must_divide_groups(tmp_path) -> None:
    ours = get_adapter_model(conv_net(), adapters_core.LoraConfig(r=4, target_modules=["grouped"]))
    with pytest.raises(NotImplementedError, match="groups > 1"):
        ours.merge_adapter()
    with pytest.raises(ValueError, match="divisible by groups"):
        get_adapter_model(conv_net(), adapters_core.LoraConfig(r=3, target_modules=["grouped"]))


def _segformer(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.SegformerConfig(
        num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
        patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
        decoder_hidden_size=32, num_labels=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0, drop_path_rate=0.0,
    )  # fmt: skip
    return transformers.SegformerForSemanticSegmentation(cfg).eval()


def test_segformer_guide_with_conv_targets(tmp_path) -> None:
    """The seed's SegFormer guide config, plus the Conv2d patch embeddings and fuse layer as targets."""
    options = dict(
        r=4,
        lora_alpha=8,
        target_modules=["query", "value", "proj", "linear_fuse"],
        modules_to_save=["classifier"],
    )
    model = peft.get_peft_model(_segformer(), peft.LoraConfig(**options))
    adapted = {n for n, m in model.named_modules() if isinstance(m, peft.tuners.lora.layer.Conv2d)}
    assert any("patch_embeddings" in n for n in adapted) and any("linear_fuse" in n for n in adapted)
    perturb_adapter_weights(model)
    model.save_pretrained(str(tmp_path))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = peft.PeftModel.from_pretrained(_segformer(), str(tmp_path)).eval()(pixel_values=pixels).logits
        ours = AdapterModel.from_pretrained(_segformer(), str(tmp_path))
        assert max_abs_diff(ours(pixel_values=pixels).logits, want) < 1e-5


def test_serving_form_refuses_conv_lora(tmp_path) -> None:
    """The mixed-batch model has no conv kernels: its validation (what `MultiAdapterModel.add` and the store run
    first) refuses a conv LoRA by name instead of mis-serving it."""
    _peft_conv(str(tmp_path))
    config = AdapterConfig.from_pretrained(str(tmp_path))
    state = load_adapter_weights(str(tmp_path))
    with pytest.raises(
        UnsupportedError, match=r"c1: adapters on a Conv1d are not supported in a mixed batch"
    ):
        parse_adapter(config, state, dict(conv_net().named_modules()))
