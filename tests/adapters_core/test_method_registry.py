"""The method table (adapters_core/registry.py): every registered spec is consistent with itself and with
PEFT, and `register_method` refuses a spec that contradicts itself or the table."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import peft
import pytest
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

import adapters_core
from adapters_core import IA3Config, LoraConfig, PeftType, PromptLearningConfig, PromptTuningConfig
from adapters_core.methods import BUILTIN_METHODS
from adapters_core.methods.adaption_prompt import AdaptionPromptConfig
from adapters_core.methods.lora import LoraTuner
from adapters_core.registry import (
    MethodSpec,
    ServingForm,
    TrainName,
    get_method,
    register_method,
    registered_methods,
    train_names,
)

SPECS = registered_methods()
TUNER_METHODS = (
    "add_adapter",
    "delete_adapter",
    "set_adapter",
    "state_dict_to_save",
    "load_state_dict_from_file",
)


def test_the_table_is_the_builtin_list():
    assert SPECS == BUILTIN_METHODS
    assert {s.peft_type for s in SPECS} == {
        "LORA", "ADALORA", "IA3", "PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "ADAPTION_PROMPT"
    }  # fmt: skip


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.peft_type)
def test_every_spec_is_consistent_with_itself_and_with_peft(spec: MethodSpec):
    assert spec.peft_type == spec.config_cls.PEFT_TYPE
    assert get_method(spec.peft_type) is spec and get_method(PeftType(spec.peft_type)) is spec
    assert spec.peft_type in {t.value for t in peft.PeftType}
    # the same config class as PEFT's for this peft_type: name, and prompt learning or not
    theirs = PEFT_TYPE_TO_CONFIG_MAPPING[spec.peft_type]
    assert spec.config_cls.__name__ == theirs.__name__
    assert spec.prompt_learning == issubclass(theirs, peft.PromptLearningConfig)
    assert spec.prompt_learning == issubclass(spec.config_cls, PromptLearningConfig)
    assert getattr(adapters_core, spec.config_cls.__name__) is spec.config_cls  # public, like PEFT's
    assert all(callable(getattr(spec.tuner_cls, m, None)) for m in TUNER_METHODS)
    # the serving form fits the config it parses
    if spec.serving is ServingForm.LORA:
        assert issubclass(spec.config_cls, LoraConfig)
    elif spec.serving is ServingForm.IA3:
        assert issubclass(spec.config_cls, IA3Config)
    elif spec.serving is ServingForm.PROMPT:
        assert issubclass(spec.config_cls, (PromptLearningConfig, AdaptionPromptConfig))
    assert (spec.to_lora is not None) == (spec.peft_type == "ADALORA")
    # every --method name builds this config, and the options it implies are fields of it
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    for train_name in spec.train_names:
        assert set(train_name.options) <= fields and train_name.learning_rate > 0


def test_train_names_are_unique_and_cover_the_cli():
    names = train_names()
    assert len(names) == len(set(names))
    assert set(names) == {
        "lora", "dora", "adalora", "ia3", "prompt-tuning", "p-tuning", "prefix-tuning", "llama-adapter"
    }  # fmt: skip


@dataclass
class _OtherConfig(LoraConfig):
    PEFT_TYPE: ClassVar[str] = "OTHER"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (MethodSpec("OTHER", LoraConfig, LoraTuner, ServingForm.LORA), "LoraConfig.PEFT_TYPE is 'LORA'"),
        (MethodSpec("LORA", LoraConfig, LoraTuner, ServingForm.IA3), "already registered"),
        (
            MethodSpec("OTHER", _OtherConfig, LoraTuner, ServingForm.LORA, (TrainName("dora"),)),
            r"train name\(s\) \['dora'\] already belong",
        ),
        (
            MethodSpec("PROMPT_TUNING", PromptTuningConfig, LoraTuner, ServingForm.LORA),
            "a prompt-learning config cannot be served as",
        ),
        (
            MethodSpec("OTHER", _OtherConfig, LoraTuner, ServingForm.IA3, to_lora=lambda c, s: (c, s)),
            "to_lora is only meaningful",
        ),
    ],
)
def test_register_method_refuses_a_contradicting_spec(spec, needle):
    with pytest.raises(ValueError, match=needle):
        register_method(spec)
    assert registered_methods() == SPECS


def test_peft_type_names_are_peft_s_and_only_the_table_says_what_we_implement():
    assert {t.value for t in PeftType} == {t.value for t in peft.PeftType}
    with pytest.raises(
        adapters_core.AdapterConfigError, match=r"unsupported peft_type 'LOHA'; Swapyard supports"
    ):
        adapters_core.AdapterConfig.from_dict({"peft_type": PeftType.LOHA, "r": 8})
