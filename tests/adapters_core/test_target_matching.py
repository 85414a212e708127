"""Target matching as PEFT 0.21 does it: default targets per model type, partial lists, exclusions, layers.

Each test builds the same config with real PEFT and with adapters_core and compares the modules adapted
(and, where an adapter is built, the outputs of PEFT's saved file loaded by us).
"""

from __future__ import annotations

import warnings

import peft
import peft.utils.constants as peft_constants
import pytest
import torch
import transformers
from peft.tuners.tuners_utils import BaseTunerLayer
from tiny_models import VOCAB, max_abs_diff, perturb_adapter_weights, tiny_llama

import adapters_core
from adapters_core import AdapterModel, NoTargetModulesError, get_adapter_model
from adapters_core.target_defaults import (
    ADALORA_DEFAULT_TARGETS,
    IA3_DEFAULT_FEEDFORWARD,
    IA3_DEFAULT_TARGETS,
    LORA_DEFAULT_TARGETS,
)
from adapters_core.tuners.layer import TunerLayer

MAPPINGS = {
    "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING": LORA_DEFAULT_TARGETS,
    "TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING": IA3_DEFAULT_TARGETS,
    "TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING": IA3_DEFAULT_FEEDFORWARD,
    "TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING": ADALORA_DEFAULT_TARGETS,
}


@pytest.mark.parametrize("peft_name", sorted(MAPPINGS))
def test_default_target_mappings_equal_peft(peft_name: str) -> None:
    theirs = getattr(peft_constants, peft_name)
    ours = MAPPINGS[peft_name]
    assert set(ours) == set(theirs)
    for model_type, targets in theirs.items():
        assert ours[model_type] == targets, model_type


def _tiny(model_type: str) -> torch.nn.Module:
    """A tiny causal LM of a model type outside the eight the seed knew (hidden 64, 2 layers)."""
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=4, hidden_size=64)
    if model_type == "opt":
        cfg = transformers.OPTConfig(
            vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
            word_embed_proj_dim=64, max_position_embeddings=64, dropout=0.0,
        )  # fmt: skip
        return transformers.OPTForCausalLM(cfg).eval()
    if model_type == "gpt_neox":
        cfg = transformers.GPTNeoXConfig(**common, intermediate_size=128, max_position_embeddings=64)
        return transformers.GPTNeoXForCausalLM(cfg).eval()
    if model_type == "bloom":
        cfg = transformers.BloomConfig(vocab_size=VOCAB, hidden_size=64, n_layer=2, n_head=4)
        return transformers.BloomForCausalLM(cfg).eval()
    if model_type == "phi":
        cfg = transformers.PhiConfig(**common, intermediate_size=128, max_position_embeddings=64)
        return transformers.PhiForCausalLM(cfg).eval()
    if model_type == "falcon":
        cfg = transformers.FalconConfig(**common, new_decoder_architecture=False, multi_query=True)
        return transformers.FalconForCausalLM(cfg).eval()
    raise AssertionError(model_type)


def _adapted(model: torch.nn.Module, layer_type: type) -> set[str]:
    """Adapted HF paths (the part after `base_model.model.`)."""
    return {
        n.removeprefix("base_model.model.") for n, m in model.named_modules() if isinstance(m, layer_type)
    }


METHODS = {
    "lora": (peft.LoraConfig, adapters_core.LoraConfig, {}),
    "ia3": (peft.IA3Config, adapters_core.IA3Config, {}),
    "adalora": (peft.AdaLoraConfig, adapters_core.AdaLoraConfig, {"total_step": 10}),
}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("model_type", ["opt", "gpt_neox", "bloom", "phi", "falcon"])
def test_default_targets_for_more_model_types(model_type: str, method: str, tmp_path) -> None:
    peft_cls, our_cls, extra = METHODS[method]
    if method == "adalora" and model_type not in ADALORA_DEFAULT_TARGETS:
        pytest.skip(f"PEFT has no AdaLoRA defaults for {model_type}")
    if method == "ia3" and model_type not in IA3_DEFAULT_TARGETS:
        pytest.skip(f"PEFT has no IA3 defaults for {model_type}")
    reference = peft.get_peft_model(_tiny(model_type), peft_cls(**extra))
    ours = get_adapter_model(_tiny(model_type), our_cls(**extra))
    assert _adapted(ours, TunerLayer) == _adapted(reference, BaseTunerLayer) != set()

    # PEFT's saved file (perturbed so that the adapter changes the output) gives PEFT's logits in ours
    perturb_adapter_weights(reference)
    reference.eval()
    reference.save_pretrained(str(tmp_path))
    loaded = AdapterModel.from_pretrained(_tiny(model_type), str(tmp_path))
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference(input_ids=ids).logits
        assert max_abs_diff(want, _tiny(model_type)(input_ids=ids).logits) > 1e-3
        assert max_abs_diff(loaded(input_ids=ids).logits, want) < 1e-5


def _same_targets(peft_kwargs: dict, our_kwargs: dict | None = None) -> set[str]:
    reference = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, **peft_kwargs))
    ours = get_adapter_model(tiny_llama(), adapters_core.LoraConfig(r=4, **(our_kwargs or peft_kwargs)))
    adapted = _adapted(ours, TunerLayer)
    assert adapted == _adapted(reference, BaseTunerLayer)
    return adapted


def test_a_list_with_names_the_model_lacks_adapts_the_rest(tmp_path) -> None:
    """One config for several architectures (llama and gpt2 names): PEFT adapts what exists."""
    targets = ["q_proj", "c_attn", "v_proj", "query"]
    adapted = _same_targets({"target_modules": targets})
    assert {k.rsplit(".", 1)[1] for k in adapted} == {"q_proj", "v_proj"}

    reference = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, target_modules=targets))
    perturb_adapter_weights(reference)
    reference.save_pretrained(str(tmp_path))
    loaded = AdapterModel.from_pretrained(tiny_llama(), str(tmp_path))
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert max_abs_diff(loaded(input_ids=ids).logits, reference(input_ids=ids).logits) < 1e-5


def test_regex_and_exclude_modules_as_peft() -> None:
    assert len(_same_targets({"target_modules": r".*layers\.1\..*_proj"})) == 7
    adapted = _same_targets({"target_modules": "all-linear", "exclude_modules": ["o_proj", "mlp.up_proj"]})
    assert not any(k.endswith(("o_proj", "up_proj")) for k in adapted) and len(adapted) == 10
    adapted = _same_targets(
        {"target_modules": ["q_proj", "k_proj"], "exclude_modules": r".*\.0\.self_attn\.k_proj"}
    )
    assert len(adapted) == 3


def test_layers_to_transform_and_layers_pattern_as_peft() -> None:
    adapted = _same_targets(
        {"target_modules": ["q_proj", "v_proj"], "layers_to_transform": [1], "layers_pattern": "layers"}
    )
    assert adapted == {"model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"}
    # PEFT: an empty list means every layer, an empty pattern means any pattern
    assert len(_same_targets({"target_modules": ["q_proj"], "layers_to_transform": []})) == 2
    assert (
        len(_same_targets({"target_modules": ["q_proj"], "layers_to_transform": 0, "layers_pattern": []}))
        == 1
    )


def test_everything_excluded_is_an_error_naming_why() -> None:
    config = {"target_modules": ["q_proj"], "exclude_modules": ["q_proj"]}
    with pytest.raises(ValueError, match="No modules were targeted"):
        peft.get_peft_model(tiny_llama(), peft.LoraConfig(**config))
    with pytest.raises(
        NoTargetModulesError, match=r"every module it matches .* is excluded by exclude_modules"
    ):
        get_adapter_model(tiny_llama(), adapters_core.LoraConfig(**config))


def test_nothing_matched_is_an_error_naming_the_targets() -> None:
    with pytest.raises(ValueError, match="not found in the base model"):
        peft.get_peft_model(tiny_llama(), peft.LoraConfig(target_modules=["c_attn", "query"]))
    with pytest.raises(
        NoTargetModulesError, match=r"\['c_attn', 'query'\] matched no module of LlamaForCausalLM"
    ):
        get_adapter_model(tiny_llama(), adapters_core.LoraConfig(target_modules=["c_attn", "query"]))


def test_unused_exclude_modules_warns_as_peft() -> None:
    config = {"target_modules": ["q_proj"], "exclude_modules": ["nonexistent"]}
    with pytest.warns(UserWarning, match="no modules were excluded"):
        peft.get_peft_model(tiny_llama(), peft.LoraConfig(**config))
    with pytest.warns(UserWarning, match="no modules were excluded"):
        get_adapter_model(tiny_llama(), adapters_core.LoraConfig(**config))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_adapter_model(
            tiny_llama(), adapters_core.LoraConfig(target_modules=["q_proj"], exclude_modules=["k_proj"])
        )
