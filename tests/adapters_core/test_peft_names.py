"""PEFT's public names in adapters_core: the same objects as ours, PEFT's signatures, PEFT's results.

Covers issue 14 items 1 (names, functions, methods), 3 (attribute pass-through for every method), 6 (signatures,
compared with real PEFT through `inspect.signature`) and 10 (`print_trainable_parameters`, every method).
"""

from __future__ import annotations

import inspect
import os

import peft
import pytest
import torch
from tiny_models import batch, max_abs_diff, perturb_adapter_weights, tiny_bert, tiny_llama, tiny_t5

import adapters_core
from adapters_core.methods.lora.model import LoraTuner

pytestmark = pytest.mark.filterwarnings("ignore")
TOL = 1e-5

ALIASES = {
    "PeftModel": "AdapterModel",
    "PeftConfig": "AdapterConfig",
    "get_peft_model": "get_adapter_model",
    **{
        f"PeftModelFor{t}": f"AdapterModelFor{t}" for t in ("CausalLM", "Seq2SeqLM", "SequenceClassification")
    },
    **{f"PeftModelFor{t}": f"AdapterModelFor{t}" for t in ("TokenClassification", "QuestionAnswering")},
    "PeftModelForFeatureExtraction": "AdapterModelForFeatureExtraction",
    "AutoPeftModel": "AutoAdapterModel",
    **{
        f"AutoPeftModelFor{t}": f"AutoAdapterModelFor{t}"
        for t in (
            "CausalLM",
            "Seq2SeqLM",
            "SequenceClassification",
            "TokenClassification",
            "QuestionAnswering",
            "FeatureExtraction",
        )
    },
}

# (builder, PEFT config kwargs) per method: the model kinds PEFT supports for each.
METHODS = {
    "lora": (tiny_llama, "LoraConfig", {"r": 4, "task_type": "CAUSAL_LM"}),
    "adalora": (
        tiny_llama,
        "AdaLoraConfig",
        {"init_r": 6, "target_r": 4, "total_step": 10, "task_type": "CAUSAL_LM"},
    ),
    "ia3": (tiny_llama, "IA3Config", {"task_type": "CAUSAL_LM"}),
    "prompt": (tiny_llama, "PromptTuningConfig", {"num_virtual_tokens": 4, "task_type": "CAUSAL_LM"}),
    "p_tuning": (tiny_bert, "PromptEncoderConfig", {"num_virtual_tokens": 4, "task_type": "SEQ_CLS"}),
    "prefix": (tiny_t5, "PrefixTuningConfig", {"num_virtual_tokens": 4, "task_type": "SEQ_2_SEQ_LM"}),
    "llama_adapter": (tiny_llama, "AdaptionPromptConfig", {"adapter_len": 4, "adapter_layers": 1}),
}


def both(method: str, seed: int = 0):
    """(PEFT model, ours) built by the same call `lib.get_peft_model(base, lib.<Config>(**kw))`."""
    build, config_name, kw = METHODS[method]
    out = []
    for lib in (peft, adapters_core):
        torch.manual_seed(seed)
        out.append(lib.get_peft_model(build(), getattr(lib, config_name)(**kw)))
    return out[0], out[1]


# -- item 1: the names --------------------------------------------------------------------------------------


def test_every_peft_name_is_importable_and_is_our_object() -> None:
    for peft_name, our_name in ALIASES.items():
        assert getattr(adapters_core, peft_name) is getattr(adapters_core, our_name), peft_name
        assert peft_name in adapters_core.__all__
    for name in ("PromptLearningConfig", "PeftType", "TaskType", "get_peft_model_state_dict"):
        assert hasattr(adapters_core, name) and name in adapters_core.__all__
    for name in ("set_peft_model_state_dict", "inject_adapter_in_model", "get_peft_config"):
        assert callable(getattr(adapters_core, name))
    assert issubclass(adapters_core.PromptTuningConfig, adapters_core.PromptLearningConfig)
    assert issubclass(adapters_core.LoraConfig, adapters_core.PeftConfig)
    assert {t.value for t in adapters_core.TaskType} <= {t.value for t in peft.TaskType}
    assert {t.value for t in adapters_core.PeftType} <= {t.value for t in peft.PeftType}


@pytest.mark.parametrize(
    ("build", "task", "cls"),
    [
        (tiny_llama, "CAUSAL_LM", "PeftModelForCausalLM"),
        (tiny_t5, "SEQ_2_SEQ_LM", "PeftModelForSeq2SeqLM"),
        (tiny_bert, "SEQ_CLS", "PeftModelForSequenceClassification"),
        (tiny_llama, None, "PeftModel"),
    ],
)
def test_get_peft_model_returns_a_peft_model_of_the_task_class(build, task, cls) -> None:
    theirs = peft.get_peft_model(build(), peft.LoraConfig(r=2, task_type=task))
    ours = adapters_core.get_peft_model(build(), adapters_core.LoraConfig(r=2, task_type=task))
    assert isinstance(ours, adapters_core.PeftModel)
    assert type(ours) is getattr(adapters_core, cls) and type(theirs).__name__ == cls


def test_get_peft_config_builds_the_config_class_of_the_dict() -> None:
    data = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj"],
    }
    ours, theirs = adapters_core.get_peft_config(dict(data)), peft.get_peft_config(dict(data))
    assert type(ours) is adapters_core.LoraConfig and type(theirs).__name__ == "LoraConfig"
    assert (ours.r, ours.lora_alpha, set(ours.target_modules)) == (theirs.r, theirs.lora_alpha, {"q_proj"})


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt", "prefix", "llama_adapter"])
def test_state_dict_functions_match_peft(method: str) -> None:
    theirs, ours = both(method)
    perturb_adapter_weights(theirs, seed=1)
    state = peft.get_peft_model_state_dict(theirs)
    result = adapters_core.set_peft_model_state_dict(ours, state)
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    mine = adapters_core.get_peft_model_state_dict(ours)
    assert mine.keys() == state.keys()
    for key in state:
        assert max_abs_diff(mine[key], state[key]) == 0.0, key
    theirs.eval(), ours.eval()
    kind = {tiny_llama: "llama", tiny_bert: "bert", tiny_t5: "t5"}[METHODS[method][0]]
    with torch.no_grad():
        assert max_abs_diff(ours(**batch(kind)).logits, theirs(**batch(kind)).logits) <= TOL


def test_a_table_into_a_trainable_p_tuning_encoder_is_refused() -> None:
    """PEFT would copy the saved table into the MLP's *input* embedding (a silently different adapter)."""
    theirs, ours = both("p_tuning")
    with pytest.raises(
        adapters_core.AdapterLoadError, match="cannot be loaded into a trainable PromptEncoder"
    ):
        adapters_core.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs))


def test_inject_adapter_in_model_matches_peft() -> None:
    config = {"r": 4, "target_modules": ["q_proj", "v_proj"]}
    torch.manual_seed(0)
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(**config), tiny_llama())
    ours = adapters_core.inject_adapter_in_model(adapters_core.LoraConfig(**config), tiny_llama())
    assert type(ours).__name__ == "LlamaForCausalLM"  # the model itself, no wrapper
    perturb_adapter_weights(theirs, seed=2)
    state = peft.get_peft_model_state_dict(theirs)
    adapters_core.set_peft_model_state_dict(ours, state)
    assert adapters_core.get_peft_model_state_dict(ours).keys() == state.keys()  # no base_model.model. prefix
    with torch.no_grad():
        assert max_abs_diff(ours(**batch("llama")).logits, theirs(**batch("llama")).logits) <= TOL
        assert max_abs_diff(ours(**batch("llama")).logits, tiny_llama()(**batch("llama")).logits) > 1e-3
    with pytest.raises(adapters_core.AdapterConfigError, match="prompt learning"):
        adapters_core.inject_adapter_in_model(
            adapters_core.PromptTuningConfig(num_virtual_tokens=2), tiny_llama()
        )


def test_active_adapters_and_prompt_methods_match_peft() -> None:
    theirs, ours = both("prompt")
    assert ours.active_adapters == theirs.active_adapters == ["default"]
    perturb_adapter_weights(theirs, seed=3)
    adapters_core.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs))
    assert max_abs_diff(ours.get_prompt(batch_size=3), theirs.get_prompt(batch_size=3)) == 0.0
    assert (
        max_abs_diff(
            ours.get_prompt_embedding_to_save("default"), theirs.get_prompt_embedding_to_save("default")
        )
        == 0
    )
    with pytest.raises(adapters_core.UnsupportedError, match="prompt-learning adapters only"):
        both("lora")[1].get_prompt(batch_size=1)


def test_prefix_get_prompt_is_peft_cache() -> None:
    torch.manual_seed(0)
    theirs = peft.get_peft_model(
        tiny_llama(), peft.PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM")
    )
    ours = adapters_core.get_peft_model(
        tiny_llama(), adapters_core.PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM")
    )
    perturb_adapter_weights(theirs, seed=4)
    adapters_core.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs))
    mine, want = ours.get_prompt(batch_size=2), theirs.get_prompt(batch_size=2)
    assert type(mine) is type(want) and len(mine.layers) == len(want.layers) == 2
    for a, b in zip(mine.layers, want.layers):
        assert max_abs_diff(a.keys, b.keys) == 0.0 and max_abs_diff(a.values, b.values) == 0.0


def test_model_card_names_base_and_method(tmp_path) -> None:
    base_dir = str(tmp_path / "base")
    tiny_llama().save_pretrained(base_dir)
    from transformers import AutoModelForCausalLM

    ours = adapters_core.get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir), adapters_core.IA3Config(task_type="CAUSAL_LM")
    )
    (tmp_path / "card").mkdir()
    (tmp_path / "card" / "README.md").write_text("---\nlicense: mit\n---\n\nMy own words.\n")
    ours.create_or_update_model_card(str(tmp_path / "card"))
    text = (tmp_path / "card" / "README.md").read_text()
    assert "license: mit" in text and "My own words." in text  # updated, not replaced (as PEFT)
    assert "library_name: peft" in text and f"base_model: {base_dir}" in text
    assert (
        "- Method: IA3" in text
        and f"- Base model: {base_dir}" in text
        and "pipeline_tag: text-generation" in text
    )


# -- item 3: attribute pass-through -------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(METHODS))
def test_attributes_pass_through_to_the_base_model_for_every_method(method: str) -> None:
    theirs, ours = both(method)
    base = ours.get_base_model()
    assert ours.config is base.config and theirs.config.model_type == ours.config.model_type
    assert ours.main_input_name == base.main_input_name and ours.name_or_path == base.name_or_path
    assert ours.device == theirs.device and ours.dtype == theirs.dtype
    assert ours.get_input_embeddings() is base.get_input_embeddings()
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = ours.no_such_thing


# -- item 10: print_trainable_parameters -------------------------------------------------------------------


@pytest.mark.parametrize("method", list(METHODS))
def test_print_trainable_parameters_prints_peft_line(method: str, capsys, tmp_path) -> None:
    theirs, ours = both(method)
    theirs.print_trainable_parameters()
    want = capsys.readouterr().out
    ours.print_trainable_parameters()
    assert capsys.readouterr().out == want and want.startswith("trainable params: ")
    theirs.save_pretrained(str(tmp_path))  # loaded for inference: PEFT's counts (and quirks) too
    build = METHODS[method][0]
    peft.PeftModel.from_pretrained(build(), str(tmp_path)).print_trainable_parameters()
    want = capsys.readouterr().out
    adapters_core.PeftModel.from_pretrained(build(), str(tmp_path)).print_trainable_parameters()
    assert capsys.readouterr().out == want


@pytest.mark.parametrize("inference_mode", [False, True])
@pytest.mark.parametrize(
    ("build", "config_name", "kw"),
    [
        (tiny_llama, "LoraConfig", {"r": 4, "task_type": "CAUSAL_LM"}),
        (tiny_llama, "IA3Config", {"task_type": "CAUSAL_LM"}),
        (tiny_bert, "LoraConfig", {"r": 2, "task_type": "SEQ_CLS"}),
        (tiny_bert, "PromptTuningConfig", {"num_virtual_tokens": 3, "task_type": "SEQ_CLS"}),
    ],
)
def test_set_adapter_trainability_and_counts_match_peft(
    build, config_name, kw, inference_mode, tmp_path, capsys
):
    """PEFT's `set_adapter(name)` makes a loaded (frozen) adapter trainable unless `inference_mode=True`."""
    torch.manual_seed(0)
    peft.get_peft_model(build(), getattr(peft, config_name)(**kw)).save_pretrained(str(tmp_path))
    lines = []
    for lib in (peft, adapters_core):
        model = lib.PeftModel.from_pretrained(build(), str(tmp_path))
        model.load_adapter(str(tmp_path), "other")
        model.set_adapter("other", inference_mode=inference_mode)
        model.print_trainable_parameters()
        lines.append(capsys.readouterr().out)
    assert lines[0] == lines[1]


# -- item 6: signatures -------------------------------------------------------------------------------------


def _params(fn) -> list[tuple[str, object, object]]:
    """(name, kind, default) of every parameter: what a caller can pass (annotations aside)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


SIGNATURES = [
    (adapters_core.PeftModel.save_pretrained, peft.PeftModel.save_pretrained),
    (adapters_core.PeftModel.from_pretrained, peft.PeftModel.from_pretrained),
    (adapters_core.PeftModel.load_adapter, peft.PeftModel.load_adapter),
    (adapters_core.PeftModel.push_to_hub, peft.PeftModel.push_to_hub),
    (adapters_core.PeftModel.__init__, peft.PeftModel.__init__),
    (adapters_core.PeftModel.add_adapter, peft.PeftModel.add_adapter),
    (adapters_core.PeftModel.set_adapter, peft.PeftModel.set_adapter),
    (adapters_core.PeftModel.create_or_update_model_card, peft.PeftModel.create_or_update_model_card),
    (adapters_core.PeftModel.get_prompt, peft.PeftModel.get_prompt),
    (adapters_core.PeftModel.get_prompt_embedding_to_save, peft.PeftModel.get_prompt_embedding_to_save),
    (adapters_core.PeftModel.print_trainable_parameters, peft.PeftModel.print_trainable_parameters),
    (adapters_core.PeftModel.merge_and_unload, peft.LoraModel.merge_and_unload),
    (adapters_core.PeftModel.unload, peft.LoraModel.unload),
    (LoraTuner.add_weighted_adapter, peft.LoraModel.add_weighted_adapter),
    (adapters_core.get_peft_model, peft.get_peft_model),
    (adapters_core.get_peft_model_state_dict, peft.get_peft_model_state_dict),
    (adapters_core.set_peft_model_state_dict, peft.set_peft_model_state_dict),
    (adapters_core.inject_adapter_in_model, peft.inject_adapter_in_model),
    (adapters_core.get_peft_config, peft.get_peft_config),
    (adapters_core.AutoPeftModelForCausalLM.from_pretrained, peft.AutoPeftModelForCausalLM.from_pretrained),
]


@pytest.mark.parametrize(("ours", "theirs"), SIGNATURES, ids=[t.__qualname__ for _, t in SIGNATURES])
def test_signature_is_peft(ours, theirs) -> None:
    assert _params(ours) == _params(theirs)


def test_active_adapters_is_a_property_like_peft() -> None:
    assert isinstance(inspect.getattr_static(adapters_core.PeftModel, "active_adapters"), property)
    assert os.path.basename(inspect.getfile(adapters_core.PeftModel)) == "adapter_model.py"


def test_peft_options_swapyard_does_not_implement_raise_by_name() -> None:
    _, prompt = both("prompt")
    with pytest.raises(adapters_core.UnsupportedError, match="task_ids"):
        prompt.get_prompt(batch_size=1, task_ids=torch.zeros(1, dtype=torch.long))
    _, lora = both("lora")
    with pytest.raises(adapters_core.UnsupportedError, match="state_dict"):
        adapters_core.get_peft_model_state_dict(lora, state_dict=lora.state_dict())
    with pytest.raises(adapters_core.UnsupportedError, match="ignore_mismatched_sizes"):
        adapters_core.set_peft_model_state_dict(lora, {}, ignore_mismatched_sizes=True)
