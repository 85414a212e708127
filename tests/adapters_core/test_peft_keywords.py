"""PEFT's keyword arguments do what they do in PEFT, or raise naming themselves (issue 14, item 6).

`save_pretrained(safe_serialization, selected_adapters, save_embedding_layers, is_main_process)`, the loading
keywords of `from_pretrained` / `load_adapter`, `merge_and_unload(progressbar, safe_merge, adapter_names)`,
`add_weighted_adapter`'s `svd_*` options, `autocast_adapter_dtype`, and `generate` on prompt-learning models.
"""

from __future__ import annotations

import os

import peft
import pytest
import torch
from safetensors.torch import load_file
from tiny_models import batch, max_abs_diff, perturb_adapter_weights, tiny_gpt2, tiny_llama
from transformers import GenerationConfig

import adapters_core
from adapters_core import PeftModel, UnsupportedError

pytestmark = pytest.mark.filterwarnings("ignore")
TOL = 1e-5
INPUTS = batch("llama")


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**INPUTS).logits


@pytest.fixture(scope="module")
def peft_dir(tmp_path_factory) -> str:
    """A PEFT LoRA save on the tiny Llama: "default" (q/v) and "other" (q/k/o) in a subfolder."""
    path = str(tmp_path_factory.mktemp("kw"))
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM"))
    model.add_adapter("other", peft.LoraConfig(r=4, target_modules=["q_proj", "k_proj", "o_proj"]))
    perturb_adapter_weights(model, seed=11)
    model.save_pretrained(path)
    return path


def pair(peft_dir: str):
    theirs = peft.PeftModel.from_pretrained(tiny_llama(), peft_dir).eval()
    theirs.load_adapter(peft_dir, "other", subfolder="other")
    ours = PeftModel.from_pretrained(tiny_llama(), peft_dir, torch_device="cpu", low_cpu_mem_usage=True)
    ours.load_adapter(peft_dir, "other", subfolder="other", revision=None, token=None, use_auth_token=None)
    return theirs, ours


# -- save_pretrained ---------------------------------------------------------------------------------------


def test_pickle_save_is_peft_bin_and_loads_back(peft_dir: str, tmp_path) -> None:
    theirs, ours = pair(peft_dir)
    ours.save_pretrained(str(tmp_path), safe_serialization=False, selected_adapters=["default"])
    assert sorted(os.listdir(tmp_path)) == ["README.md", "adapter_config.json", "adapter_model.bin"]
    loaded = torch.load(tmp_path / "adapter_model.bin", weights_only=True)
    assert loaded.keys() == load_file(os.path.join(peft_dir, "adapter_model.safetensors")).keys()
    reloaded = peft.PeftModel.from_pretrained(tiny_llama(), str(tmp_path)).eval()
    assert max_abs_diff(logits(reloaded), logits(theirs)) <= TOL


def test_not_main_process_writes_nothing(peft_dir: str, tmp_path) -> None:
    _, ours = pair(peft_dir)
    ours.save_pretrained(str(tmp_path / "x"), is_main_process=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("mode", [True, False, "auto"])
@pytest.mark.parametrize("targets", [["q_proj"], ["q_proj", "embed_tokens"]])
def test_save_embedding_layers_saves_what_peft_saves(mode, targets, tmp_path) -> None:
    theirs = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=targets))
    perturb_adapter_weights(theirs, seed=3)
    theirs.save_pretrained(str(tmp_path / "theirs"), save_embedding_layers=mode)
    ours = adapters_core.get_peft_model(tiny_llama(), adapters_core.LoraConfig(r=2, target_modules=targets))
    adapters_core.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs))
    ours.save_pretrained(str(tmp_path / "ours"), save_embedding_layers=mode)
    want = load_file(str(tmp_path / "theirs" / "adapter_model.safetensors"))
    got = load_file(str(tmp_path / "ours" / "adapter_model.safetensors"))
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_save_options_swapyard_cannot_honour_raise(peft_dir: str, tmp_path) -> None:
    _, ours = pair(peft_dir)
    with pytest.raises(UnsupportedError, match="path_initial_model_for_weight_conversion"):
        ours.save_pretrained(str(tmp_path), path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    with pytest.raises(UnsupportedError, match="state_dict"):
        ours.save_pretrained(str(tmp_path), state_dict={})
    with pytest.raises(TypeError, match="max_shard_sizes"):
        ours.save_pretrained(str(tmp_path), max_shard_sizes="1GB")


# -- loading ------------------------------------------------------------------------------------------------


def test_loading_keywords_and_their_errors(peft_dir: str) -> None:
    theirs, ours = pair(peft_dir)
    assert max_abs_diff(logits(ours), logits(theirs)) <= TOL
    with pytest.raises(TypeError, match="force_downloads"):
        PeftModel.from_pretrained(tiny_llama(), peft_dir, force_downloads=True)
    with pytest.raises(UnsupportedError, match="ephemeral_gpu_offload"):
        PeftModel.from_pretrained(tiny_llama(), peft_dir, ephemeral_gpu_offload=True)
    with pytest.raises(UnsupportedError, match="key_mapping"):
        ours.load_adapter(peft_dir, "third", key_mapping={"a": "b"})
    with pytest.raises(UnsupportedError, match="ignore_mismatched_sizes"):
        ours.load_adapter(peft_dir, "third", ignore_mismatched_sizes=True)
    assert "third" not in ours.peft_config


def test_load_adapter_under_an_existing_name_overwrites_it_like_peft(peft_dir: str) -> None:
    theirs, ours = pair(peft_dir)
    ours.set_adapter("other"), theirs.set_adapter("other")
    perturb_adapter_weights(ours, seed=99)  # both adapters now differ from the files
    assert max_abs_diff(logits(ours), logits(theirs)) > 1e-3
    result = ours.load_adapter(peft_dir, "other", subfolder="other")  # reload the files into "other"
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    assert max_abs_diff(logits(ours), logits(theirs)) <= TOL
    # files of another config into an existing adapter: PEFT half-loads them; we refuse, naming the tensors
    with pytest.raises(adapters_core.AdapterWeightsError, match="v_proj"):
        ours.load_adapter(peft_dir, "other")


@pytest.mark.parametrize("autocast", [True, False])
def test_autocast_adapter_dtype_as_peft(peft_dir: str, autocast: bool) -> None:
    theirs = peft.PeftModel.from_pretrained(
        tiny_llama().to(torch.bfloat16), peft_dir, autocast_adapter_dtype=autocast
    )
    ours = PeftModel.from_pretrained(
        tiny_llama().to(torch.bfloat16), peft_dir, autocast_adapter_dtype=autocast
    )
    want = {n: p.dtype for n, p in theirs.named_parameters() if "lora_" in n}
    got = {n: p.dtype for n, p in ours.named_parameters() if "lora_" in n}
    assert got == want and set(want.values()) == {torch.float32 if autocast else torch.bfloat16}
    fresh = adapters_core.get_peft_model(
        tiny_llama().to(torch.bfloat16), adapters_core.LoraConfig(r=2), autocast_adapter_dtype=autocast
    )
    fresh_peft = peft.get_peft_model(
        tiny_llama().to(torch.bfloat16), peft.LoraConfig(r=2), autocast_adapter_dtype=autocast
    )
    assert {p.dtype for n, p in fresh.named_parameters() if "lora_" in n} == {
        p.dtype for n, p in fresh_peft.named_parameters() if "lora_" in n
    }


def test_mixed_get_peft_model_points_to_multi_adapter_model() -> None:
    with pytest.raises(UnsupportedError, match="MultiAdapterModel"):
        adapters_core.get_peft_model(tiny_llama(), adapters_core.LoraConfig(r=2), mixed=True)


# -- merging and combining ---------------------------------------------------------------------------------


@pytest.mark.parametrize("progressbar", [True, False])
def test_merge_and_unload_keywords(peft_dir: str, progressbar: bool, capsys) -> None:
    theirs, ours = pair(peft_dir)
    want = logits(theirs.merge_and_unload(progressbar=progressbar, safe_merge=True, adapter_names=["other"]))
    capsys.readouterr()
    merged = ours.merge_and_unload(progressbar=progressbar, safe_merge=True, adapter_names=["other"])
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert max_abs_diff(logits(merged), want) <= TOL
    assert ("Unloading and merging model" in capsys.readouterr().err) == progressbar


@pytest.mark.parametrize(
    "options",
    [
        {"svd_rank": 3, "svd_clamp": 0.9},
        {"svd_full_matrices": False, "svd_driver": None},
        {"svd_rank": 2, "svd_clamp": 0.5, "svd_full_matrices": False},
    ],
)
def test_add_weighted_adapter_svd_options_match_peft(peft_dir: str, options: dict) -> None:
    theirs, ours = pair(peft_dir)
    for model in (theirs, ours):
        model.add_weighted_adapter(
            ["default", "other"], [0.8, -0.5], "mix", combination_type="svd", **options
        )
        model.set_adapter("mix")
    assert max_abs_diff(logits(ours), logits(theirs)) <= TOL
    assert max_abs_diff(logits(ours), logits(tiny_llama())) > 1e-3


def test_weighted_options_of_unimplemented_combinations_raise(peft_dir: str) -> None:
    _, ours = pair(peft_dir)
    with pytest.raises(UnsupportedError, match="density"):
        ours.add_weighted_adapter(
            ["default", "other"], [1.0, 1.0], "mix", combination_type="svd", density=0.5
        )
    with pytest.raises(UnsupportedError, match="'ties'"):
        ours.add_weighted_adapter(["default", "other"], [1.0, 1.0], "mix", combination_type="ties")


# -- generate on prompt-learning models ---------------------------------------------------------------------


@pytest.fixture()
def prompt_model():
    model = adapters_core.get_peft_model(
        tiny_llama(), adapters_core.PromptTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM")
    )
    return model.eval()


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"num_beams": 3}, "num_beams=3"),
        ({"num_return_sequences": 2}, "num_return_sequences"),
        ({"no_repeat_ngram_size": 2}, "no_repeat_ngram_size"),
        ({"output_scores": True, "return_dict_in_generate": True}, "output_scores"),
        ({"logits_processor": [lambda ids, scores: scores]}, "logits_processor"),
        ({"generation_config": GenerationConfig(length_penalty=0.5, max_new_tokens=3)}, "length_penalty"),
    ],
)
def test_prompt_generate_names_what_it_does_not_support(prompt_model, kwargs: dict, named: str) -> None:
    with pytest.raises(UnsupportedError, match=named):
        prompt_model.generate(**INPUTS, max_new_tokens=3, **kwargs)


def test_prompt_generate_accepts_transformers_defaults(prompt_model) -> None:
    """Options at their transformers defaults change nothing, so they are accepted."""
    plain = prompt_model.generate(**INPUTS, max_new_tokens=4)
    same = prompt_model.generate(
        **INPUTS, max_new_tokens=4, num_beams=1, num_return_sequences=1, output_scores=False, use_cache=True
    )
    assert torch.equal(plain, same)
    with pytest.raises(TypeError, match="not_an_option"):
        prompt_model.generate(**INPUTS, max_new_tokens=3, not_an_option=1)


@pytest.mark.parametrize("make", [peft.get_peft_model, adapters_core.get_peft_model])
def test_safe_merge_refuses_a_broken_lora_bias_as_peft_does(make) -> None:
    """`safe_merge` checks the merged bias too (`lora_bias=True` trains one in lora_B): a NaN there must raise,
    not be written into the base layer."""
    model = make(tiny_gpt2(), peft.LoraConfig(r=2, lora_bias=True, target_modules=["c_attn"]))
    for name, param in model.named_parameters():
        if "lora_B" in name and name.endswith("bias"):
            param.data[0] = float("nan")
            break
    else:
        raise AssertionError("no lora_B bias")
    with pytest.raises(ValueError, match="NaNs detected in the merged weights"):
        model.merge_and_unload(safe_merge=True)
