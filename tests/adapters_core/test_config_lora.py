"""LoraConfig, AdaLoraConfig and IA3Config: PEFT's fields and defaults, PEFT's files, fix-it errors."""

from __future__ import annotations

import dataclasses
import json

import peft
import pytest

from adapters_core import (
    AdaLoraConfig,
    AdapterConfig,
    AdapterConfigError,
    IA3Config,
    LoraConfig,
    UnsupportedError,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
PAIRS = [(LoraConfig, peft.LoraConfig), (AdaLoraConfig, peft.AdaLoraConfig), (IA3Config, peft.IA3Config)]


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=lambda c: c.__name__)
def test_fields_and_defaults_are_peft_s(ours, theirs) -> None:
    expected = {k: v for k, v in _defaults(theirs).items() if k != "runtime_config"}  # PEFT drops it on load
    got = _defaults(ours)
    assert set(got) == set(expected)
    for name, value in expected.items():
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        assert got[name] == value, name


@pytest.mark.parametrize(
    "peft_config",
    [
        peft.LoraConfig(
            r=4, target_modules=["q", "v"], rank_pattern={"q": 2}, use_dora=True, task_type="CAUSAL_LM"
        ),
        peft.AdaLoraConfig(init_r=6, total_step=10, target_modules=["q"], lora_alpha=0),
        peft.IA3Config(target_modules=["k", "wo"], feedforward_modules=["wo"], task_type="SEQ_2_SEQ_LM"),
    ],
    ids=["lora", "adalora", "ia3"],
)
def test_reads_peft_files_and_writes_them_back(peft_config, tmp_path) -> None:
    peft_config.inference_mode = True  # PeftModel.save_pretrained forces it; our config writer always does
    peft_config.save_pretrained(str(tmp_path / "peft"))
    config = AdapterConfig.from_pretrained(str(tmp_path / "peft"))
    assert type(config).__name__ == type(peft_config).__name__
    assert config.target_modules == peft_config.target_modules  # lists become sets, like PEFT
    config.save_pretrained(str(tmp_path / "ours"))
    theirs = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    ours = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    for data in (theirs, ours):
        data.pop("runtime_config", None)
        for key in ("target_modules", "feedforward_modules"):
            if isinstance(data.get(key), list):
                data[key] = sorted(data[key])
    assert ours == theirs


def test_newer_peft_keys_warn_and_load() -> None:
    data = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "brand_new_field": 1}
    with pytest.warns(UserWarning, match=r"ignoring keys unknown to Swapyard's LoraConfig .*brand_new_field"):
        config = AdapterConfig.from_dict(data)
    assert isinstance(config, LoraConfig) and config.r == 4


def test_regex_targets_with_layer_filters_are_rejected_like_peft() -> None:
    with pytest.raises(
        AdapterConfigError, match="`layers_to_transform` cannot be used when `target_modules` is a str"
    ):
        LoraConfig(target_modules=r".*q_proj", layers_to_transform=[0])
    with pytest.raises(
        AdapterConfigError, match="`layers_pattern` cannot be used when `target_modules` is a str"
    ):
        LoraConfig(target_modules=r".*q_proj", layers_pattern="layers")
    with pytest.raises(
        AdapterConfigError, match="When `layers_pattern` is specified, `layers_to_transform` must"
    ):
        LoraConfig(target_modules=["q_proj"], layers_pattern="layers")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("alora_invocation_tokens", [1, 2]),
        ("use_bdlora", {"nblocks": 2}),
        ("arrow_config", {"top_k": 2}),
        ("velora_config", {}),
        ("monteclora_config", {}),
        ("kasa_config", {}),
        ("use_qalora", True),
        ("layer_replication", [[0, 1]]),
        ("target_parameters", ["experts.weight"]),
        ("trainable_token_indices", [1, 2]),
        ("init_lora_weights", "mica"),
    ],
)
def test_variant_switches_raise_naming_the_field(field, value) -> None:
    with pytest.raises(UnsupportedError, match=field):
        LoraConfig(target_modules=["q_proj"], **{field: value})
    with pytest.raises(UnsupportedError, match=field):
        AdapterConfig.from_dict(
            {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": None, field: value}
        )


def test_value_errors_say_how_to_fix() -> None:
    with pytest.raises(AdapterConfigError, match="bias must be 'none', 'all' or 'lora_only'"):
        LoraConfig(bias="some")
    with pytest.raises(AdapterConfigError, match="r must be a positive integer"):
        LoraConfig(r=0)
    with pytest.raises(AdapterConfigError, match="lora_bias=True is not supported with DoRA"):
        LoraConfig(lora_bias=True, use_dora=True)
    with pytest.raises(AdapterConfigError, match="AdaLoRA does not work when `total_step` is None"):
        AdaLoraConfig()
    with pytest.raises(AdapterConfigError, match="AdaLoRA does not support DoRA"):
        AdaLoraConfig(total_step=10, use_dora=True)
    with pytest.raises(AdapterConfigError, match="budgeting phase"):
        AdaLoraConfig(total_step=10, tinit=8, tfinal=3)
    with pytest.raises(AdapterConfigError, match=r"rank_pattern\['q.lora_E'\] must be a list of booleans"):
        AdaLoraConfig(total_step=10, rank_pattern={"q.lora_E": 3})
    with pytest.raises(
        AdapterConfigError, match=r"`feedforward_modules` should be a subset of `target_modules`; \['wo'\]"
    ):
        IA3Config(target_modules=["k"], feedforward_modules=["wo"])


def test_base_mutating_init_warns() -> None:
    with pytest.warns(UserWarning, match="changes the base weights"):
        LoraConfig(init_lora_weights="pissa")
