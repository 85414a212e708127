"""Bad adapters fail loudly, naming the module and the problem, and leave the base model untouched."""

from __future__ import annotations

import json
import os
import shutil

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import batch, max_abs_diff, perturb_adapter_weights, tiny_bert, tiny_llama

from adapters_core import (
    AdaLoraConfig,
    AdapterConfigError,
    AdapterModel,
    AdapterShapeError,
    AdapterWeightsError,
    LoraConfig,
    NoTargetModulesError,
    UnsafeFormatError,
    UnsupportedError,
    get_adapter_model,
)
from adapters_core.tuners.layer import TunerLayer

pytestmark = pytest.mark.filterwarnings("ignore")
PREFIX = "base_model.model."
Q = PREFIX + "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("good"))
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    perturb_adapter_weights(model)
    model.save_pretrained(path)
    return path


def edited_copy(good_dir: str, tmp_path, edit_weights=None, edit_config=None) -> str:
    path = str(tmp_path / "bad")
    shutil.copytree(good_dir, path)
    if edit_weights is not None:
        state = load_file(os.path.join(path, "adapter_model.safetensors"))
        edit_weights(state)
        save_file(state, os.path.join(path, "adapter_model.safetensors"))
    if edit_config is not None:
        with open(os.path.join(path, "adapter_config.json")) as fh:
            config = json.load(fh)
        edit_config(config)
        with open(os.path.join(path, "adapter_config.json"), "w") as fh:
            json.dump(config, fh)
    return path


def assert_untouched(model: torch.nn.Module) -> None:
    assert not any(isinstance(m, TunerLayer) for m in model.modules())
    inputs = batch("llama")
    with torch.no_grad():
        assert max_abs_diff(model(**inputs).logits, tiny_llama()(**inputs).logits) == 0.0


def test_shape_from_another_model_names_module_and_dimension(good_dir, tmp_path) -> None:
    def widen(state):
        state[Q + ".lora_A.weight"] = torch.randn(4, 128)

    base = tiny_llama()
    with pytest.raises(AdapterShapeError) as err:
        AdapterModel.from_pretrained(base, edited_copy(good_dir, tmp_path, widen))
    assert str(err.value) == (
        "model.layers.0.self_attn.q_proj: lora_A has shape (4, 128) but the base layer has in_features=64 "
        "— adapter trained for another model?"
    )
    assert_untouched(base)


def test_rank_that_the_config_does_not_give(good_dir, tmp_path) -> None:
    def rank8(state):
        state[Q + ".lora_B.weight"] = torch.randn(64, 8)

    with pytest.raises(
        AdapterShapeError, match=r"q_proj: lora_B has shape \(64, 8\) but the config gives this module r=4"
    ):
        AdapterModel.from_pretrained(tiny_llama(), edited_copy(good_dir, tmp_path, rank8))


def test_key_the_config_does_not_explain(good_dir, tmp_path) -> None:
    def extra(state):
        state[PREFIX + "model.layers.0.mlp.gate_proj.lora_A.weight"] = torch.randn(4, 64)

    base = tiny_llama()
    with pytest.raises(
        AdapterWeightsError, match=r"1 tensor\(s\) in the file are not explained .*gate_proj\.lora_A"
    ):
        AdapterModel.from_pretrained(base, edited_copy(good_dir, tmp_path, extra))
    assert_untouched(base)


def test_missing_tensors_of_a_targeted_module(good_dir, tmp_path) -> None:
    def drop(state):
        del state[Q + ".lora_A.weight"], state[Q + ".lora_B.weight"]

    with pytest.raises(
        AdapterWeightsError,
        match=r"targets module\(s\) with no tensors in the file: model\.layers\.0\.self_attn\.q_proj",
    ):
        AdapterModel.from_pretrained(tiny_llama(), edited_copy(good_dir, tmp_path, drop))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights(good_dir, tmp_path, value) -> None:
    def poison(state):
        state[Q + ".lora_B.weight"][3, 1] = value

    with pytest.raises(
        AdapterWeightsError,
        match=r"'base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_B\.weight' contains NaN or Inf",
    ):
        AdapterModel.from_pretrained(tiny_llama(), edited_copy(good_dir, tmp_path, poison))


def test_pickle_can_be_refused(good_dir, tmp_path) -> None:
    path = edited_copy(good_dir, tmp_path)
    state = load_file(os.path.join(path, "adapter_model.safetensors"))
    os.remove(os.path.join(path, "adapter_model.safetensors"))
    torch.save(state, os.path.join(path, "adapter_model.bin"))
    base = tiny_llama()
    with pytest.raises(UnsafeFormatError, match=r"only a pickle file .* pass allow_pickle=True"):
        AdapterModel.from_pretrained(base, path, allow_pickle=False)
    assert_untouched(base)
    loaded = AdapterModel.from_pretrained(base, path)
    reference = AdapterModel.from_pretrained(tiny_llama(), good_dir)
    inputs = batch("llama")
    with torch.no_grad():
        assert max_abs_diff(loaded(**inputs).logits, reference(**inputs).logits) == 0.0


def test_target_missing_from_the_model(good_dir, tmp_path) -> None:
    def gpt2_names(config):
        config["target_modules"] = ["c_attn", "c_fc"]

    base = tiny_llama()
    with pytest.raises(
        NoTargetModulesError,
        match=r"target_modules=\['c_attn', 'c_fc'\] matched no module of LlamaForCausalLM",
    ):
        AdapterModel.from_pretrained(base, edited_copy(good_dir, tmp_path, edit_config=gpt2_names))
    assert_untouched(base)


def test_zero_modules_matched() -> None:
    with pytest.raises(
        NoTargetModulesError, match=r"target_modules='.*nothing.*' matched no module of LlamaForCausalLM"
    ):
        get_adapter_model(tiny_llama(), LoraConfig(target_modules=r".*nothing.*"))
    config = LoraConfig(target_modules=["q_proj"], layers_to_transform=[7])
    with pytest.raises(NoTargetModulesError, match=r"layers_to_transform=\[7\].*matched no module"):
        get_adapter_model(tiny_llama(), config)


def test_unsupported_module_type_is_named() -> None:
    base = tiny_llama()
    with pytest.raises(
        UnsupportedError,
        match=r"model\.layers\.0\.input_layernorm: module type LlamaRMSNorm cannot be adapted",
    ):
        get_adapter_model(base, LoraConfig(target_modules=["q_proj", "input_layernorm"]))
    assert_untouched(base)


def test_variant_switches_are_rejected_not_ignored(good_dir, tmp_path) -> None:
    for field, value in [
        ("alora_invocation_tokens", [5, 6]),
        ("use_qalora", True),
        ("init_lora_weights", "mica"),
    ]:

        def switch(config, field=field, value=value):
            config[field] = value

        path = edited_copy(good_dir, tmp_path / field, edit_config=switch)
        with pytest.raises(UnsupportedError, match=field):
            AdapterModel.from_pretrained(tiny_llama(), path)


def test_unknown_peft_type_and_missing_required_keys(good_dir, tmp_path) -> None:
    def vera(config):
        config["peft_type"] = "VERA"

    with pytest.raises(AdapterConfigError, match="unknown or unsupported peft_type 'VERA'"):
        AdapterModel.from_pretrained(tiny_llama(), edited_copy(good_dir, tmp_path / "a", edit_config=vera))

    def truncate(config):
        del config["r"]

    with pytest.raises(AdapterConfigError, match=r"missing required key\(s\) \['r'\] for LoraConfig"):
        AdapterModel.from_pretrained(
            tiny_llama(), edited_copy(good_dir, tmp_path / "b", edit_config=truncate)
        )


def test_head_for_another_label_count(tmp_path) -> None:
    model = peft.get_peft_model(tiny_bert(num_labels=2), peft.LoraConfig(r=4, task_type="SEQ_CLS"))
    model.save_pretrained(str(tmp_path))
    # safetensors files are key-sorted, so the head's bias is checked first
    expected = r"classifier: bias has shape \(2,\) but the model's module has \(3,\) \(modules_to_save\) — a head for"
    with pytest.raises(AdapterShapeError, match=expected):
        AdapterModel.from_pretrained(tiny_bert(num_labels=3), str(tmp_path))


def test_adalora_rank_pattern_for_an_untargeted_module(tmp_path) -> None:
    config = peft.AdaLoraConfig(init_r=4, total_step=10, target_modules=["q_proj"])
    model = peft.get_peft_model(tiny_llama(), config)
    model.save_pretrained(str(tmp_path))
    path = str(tmp_path)
    with open(os.path.join(path, "adapter_config.json")) as fh:
        data = json.load(fh)
    data["rank_pattern"] = {"model.layers.0.self_attn.v_proj.lora_E": [True, False, True, True]}
    with open(os.path.join(path, "adapter_config.json"), "w") as fh:
        json.dump(data, fh)
    with pytest.raises(AdapterConfigError, match=r"rank_pattern names 'model\.layers\.0\.self_attn\.v_proj'"):
        AdapterModel.from_pretrained(tiny_llama(), path)
    assert isinstance(AdaLoraConfig.from_pretrained(path), AdaLoraConfig)
