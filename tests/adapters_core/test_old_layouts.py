"""Adapters written by older PEFT versions load with the outputs their author trained.

The old files are made from what real PEFT 0.21 writes, transformed as old PEFT wrote them:
- before PEFT 0.7 a LoRA layer was the `nn.Linear` itself, so `bias="all"`/`"lora_only"` saved a targeted
  module's bias as `….c_attn.bias` (no `base_layer`);
- AdaLoRA adapters saved for inference had `total_step: null`;
- 0.3–0.6 configs carry other keys (`enable_lora`, `merge_weights`, …) and lack newer ones.
"""

from __future__ import annotations

import json
import os
import shutil

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import batch, max_abs_diff, perturb_adapter_weights, tiny_bert, tiny_gpt2, tiny_llama

from adapters_core import AdapterConfigError, AdapterModel, MultiAdapterModel

WEIGHTS = "adapter_model.safetensors"


def _save_peft(model: peft.PeftModel, path: str) -> None:
    """Perturb every adapter tensor and every bias (so that each changes the output), then save."""
    perturb_adapter_weights(model)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    model.save_pretrained(path)


def _rewrite(path: str, edit_state=None, edit_config=None, as_bin: bool = False) -> None:
    state = load_file(os.path.join(path, WEIGHTS))
    if edit_state is not None:
        state = edit_state(state)
    if as_bin:
        os.remove(os.path.join(path, WEIGHTS))
        torch.save(state, os.path.join(path, "adapter_model.bin"))
    else:
        save_file(state, os.path.join(path, WEIGHTS), metadata={"format": "pt"})
    if edit_config is not None:
        with open(os.path.join(path, "adapter_config.json")) as fh:
            config = json.load(fh)
        edit_config(config)
        with open(os.path.join(path, "adapter_config.json"), "w") as fh:
            json.dump(config, fh)


def _pre_07_bias_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {k.replace(".base_layer.bias", ".bias"): v for k, v in state.items()}
    assert renamed.keys() != state.keys(), "the file had no targeted-module bias to rename"
    return renamed


BIAS_CASES = {
    "gpt2-all": (tiny_gpt2, "gpt2", {"target_modules": ["c_attn", "c_fc"], "bias": "all"}),
    "gpt2-lora_only": (tiny_gpt2, "gpt2", {"target_modules": ["c_attn", "c_fc"], "bias": "lora_only"}),
    "bert-all-head": (
        tiny_bert, "bert",
        {"target_modules": ["query", "value"], "bias": "all", "modules_to_save": ["classifier"], "task_type": "SEQ_CLS"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BIAS_CASES))
@pytest.mark.parametrize("as_bin", [False, True], ids=["safetensors", "bin"])
def test_pre_07_bias_keys_load_as_trained(case: str, as_bin: bool, tmp_path) -> None:
    build, kind, options = BIAS_CASES[case]
    new, old = str(tmp_path / "new"), str(tmp_path / "old")
    _save_peft(peft.get_peft_model(build(), peft.LoraConfig(r=4, **options)), new)
    shutil.copytree(new, old)
    _rewrite(old, _pre_07_bias_names, as_bin=as_bin)

    inputs = batch(kind)
    reference = peft.PeftModel.from_pretrained(build(), new).eval()
    with torch.no_grad():
        want = reference(**inputs).logits
        ours = AdapterModel.from_pretrained(build(), old)(**inputs).logits
        assert max_abs_diff(ours, want) < 1e-5
        # PEFT 0.21 drops the renamed biases without a word (load_state_dict(strict=False)): its output
        # differs; we load them where PEFT 0.6 did. If this starts failing, PEFT fixed it: drop this line.
        assert max_abs_diff(peft.PeftModel.from_pretrained(build(), old).eval()(**inputs).logits, want) > 1e-3

        # the serving form packs tokens (positions count from each row's first real token): compare unpadded rows
        ids = inputs["input_ids"][:, -3:]
        multi = MultiAdapterModel(build())
        multi.add("old", old)
        served = multi(input_ids=ids, adapter_names=["old"] * ids.shape[0]).logits
        assert max_abs_diff(served, reference(input_ids=ids).logits) < 1e-5


def _adalora(path: str) -> peft.PeftModel:
    config = peft.AdaLoraConfig(init_r=6, target_r=4, total_step=10, target_modules=["q_proj", "v_proj"])
    model = peft.get_peft_model(tiny_llama(), config)
    perturb_adapter_weights(model)
    model.save_pretrained(path)
    return model


def test_adalora_with_null_total_step_loads_for_inference(tmp_path) -> None:
    new, old = str(tmp_path / "new"), str(tmp_path / "old")
    _adalora(new)
    shutil.copytree(new, old)

    def null_total_step(config: dict) -> None:
        config["total_step"] = None

    _rewrite(old, edit_config=null_total_step)
    with pytest.raises(ValueError, match="total_step"):  # PEFT 0.21 refuses what PEFT 0.6 wrote
        peft.PeftModel.from_pretrained(tiny_llama(), old)

    inputs = batch("llama")
    with torch.no_grad():
        want = peft.PeftModel.from_pretrained(tiny_llama(), new).eval()(**inputs).logits
        assert max_abs_diff(want, tiny_llama()(**inputs).logits) > 1e-3
        assert max_abs_diff(AdapterModel.from_pretrained(tiny_llama(), old)(**inputs).logits, want) < 1e-5
        multi = MultiAdapterModel(tiny_llama())
        multi.add("old", old)
        assert max_abs_diff(multi(**inputs, adapter_names=["old"] * 3).logits, want) < 1e-5
    # training needs the schedule: loading it as trainable says so
    with pytest.raises(AdapterConfigError, match="total_step"):
        AdapterModel.from_pretrained(tiny_llama(), old, is_trainable=True)


PEFT_03_CONFIG = {  # keys as PEFT 0.3 wrote them (no rank_pattern / layers_* / init_lora_weights)
    "base_model_name_or_path": "tiny-llama",
    "bias": "none",
    "enable_lora": None,
    "fan_in_fan_out": False,
    "inference_mode": True,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "merge_weights": False,
    "modules_to_save": None,
    "peft_type": "LORA",
    "r": 4,
    "target_modules": ["q_proj", "v_proj"],
    "task_type": "CAUSAL_LM",
}
PEFT_06_CONFIG = {  # keys as PEFT 0.6.2 wrote them
    "alpha_pattern": {},
    "auto_mapping": None,
    "base_model_name_or_path": "tiny-llama",
    "bias": "none",
    "fan_in_fan_out": False,
    "inference_mode": True,
    "init_lora_weights": True,
    "layers_pattern": None,
    "layers_to_transform": None,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "modules_to_save": None,
    "peft_type": "LORA",
    "r": 4,
    "rank_pattern": {},
    "revision": None,
    "target_modules": ["q_proj", "v_proj"],
    "task_type": "CAUSAL_LM",
}


@pytest.mark.parametrize("old_config", [PEFT_03_CONFIG, PEFT_06_CONFIG], ids=["peft-0.3", "peft-0.6"])
def test_old_lora_configs_load_with_peft_outputs(old_config: dict, tmp_path) -> None:
    path = str(tmp_path)
    model = peft.get_peft_model(
        tiny_llama(), peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    )
    perturb_adapter_weights(model)
    model.save_pretrained(path)
    _rewrite(path, edit_config=lambda c: (c.clear(), c.update(old_config)), as_bin=True)
    inputs = batch("llama")
    with torch.no_grad():
        want = peft.PeftModel.from_pretrained(tiny_llama(), path).eval()(**inputs).logits
        assert max_abs_diff(want, tiny_llama()(**inputs).logits) > 1e-3
        assert max_abs_diff(AdapterModel.from_pretrained(tiny_llama(), path)(**inputs).logits, want) < 1e-5
