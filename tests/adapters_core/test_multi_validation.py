"""MultiAdapterModel.parse refuses adapters that would serve wrong or broken answers, naming the field or module:
config numbers out of range, files whose modules disagree with their config, and weights whose outputs
overflow on the validation probe — and it measures each accepted adapter's effect with the serving math."""

from __future__ import annotations

import json
import os
import re

import peft
import pytest
import torch
from safetensors.torch import load_file
from tiny_models import perturb_adapter_weights, tiny_llama

from adapters_core import AdapterConfigError, AdapterWeightsError, NoTargetModulesError
from adapters_core.config import AdapterConfig, parse_json
from adapters_core.multi import MultiAdapterModel
from adapters_core.multi.probe import probe_rows

pytestmark = pytest.mark.filterwarnings("ignore")
LAYER = "base_model.model.model.layers.{}.self_attn.{}"
LORA = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def peft_files(
    tmp_path, config: peft.PeftConfig, seed: int = 0
) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
    """An adapter as real PEFT saves it (perturbed so that it changes the output), read back by us."""
    model = peft.get_peft_model(tiny_llama(), config)
    perturb_adapter_weights(model, seed)
    path = str(tmp_path / f"adapter-{seed}")
    model.save_pretrained(path)
    return AdapterConfig.from_pretrained(path), load_file(os.path.join(path, "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def model() -> MultiAdapterModel:
    return MultiAdapterModel(tiny_llama(), max_adapters=4)


@pytest.fixture(scope="module")
def lora(tmp_path_factory) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
    return peft_files(
        tmp_path_factory.mktemp("lora"), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )


# -- config numbers ------------------------------------------------------------------------------------
BAD_NUMBERS = [
    ({"lora_alpha": float("nan")}, "lora_alpha"),
    ({"lora_alpha": float("inf")}, "lora_alpha"),
    ({"lora_alpha": 1e308}, "lora_alpha"),
    ({"lora_alpha": "16"}, "lora_alpha"),
    ({"r": 0}, "r must be"),
    ({"r": 10**9}, "r must be"),
    ({"r": 4.0}, "r must be"),
    ({"r": True}, "r must be"),
    ({"lora_dropout": 1.0}, "lora_dropout"),
    ({"lora_dropout": float("nan")}, "lora_dropout"),
    ({"rank_pattern": {"q_proj": 0}}, "rank_pattern['q_proj']"),
    ({"alpha_pattern": {"q_proj": float("-inf")}}, "alpha_pattern['q_proj']"),
    ({"layers_to_transform": [-1]}, "layers_to_transform"),
    ({"init_lora_weights": float("nan")}, "init_lora_weights"),
    ({"use_dora": "false"}, "use_dora"),  # a truthy string would silently switch DoRA on
    ({"target_modules": 5}, "target_modules"),
    ({"peft_type": ["LORA"]}, "peft_type"),
]


@pytest.mark.parametrize(("change", "field"), BAD_NUMBERS, ids=[str(c) for c, _ in BAD_NUMBERS])
def test_lora_config_numbers_are_checked(change, field) -> None:
    with pytest.raises(AdapterConfigError, match=rf"(^|: ){re.escape(field)}.* got "):
        AdapterConfig.from_dict({**LORA, **change})


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (
            {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 10**7},
            "num_virtual_tokens",
        ),
        (
            {
                "peft_type": "P_TUNING",
                "task_type": "CAUSAL_LM",
                "num_virtual_tokens": 4,
                "encoder_dropout": 2.0,
            },
            "encoder_dropout",
        ),
        (
            {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4, "num_transformer_submodules": 3},
            "num_transformer_submodules",
        ),
        ({"peft_type": "ADAPTION_PROMPT", "adapter_len": 10**9, "adapter_layers": 1}, "adapter_len"),
        ({**LORA, "peft_type": "ADALORA", "init_r": 4, "total_step": 10, "beta1": float("nan")}, "beta1"),
        ({**LORA, "peft_type": "ADALORA", "init_r": 0, "total_step": 10}, "init_r"),
    ],
)
def test_other_methods_numbers_are_checked(data, field) -> None:
    with pytest.raises(AdapterConfigError, match=f"^{field} must be"):
        AdapterConfig.from_dict(data)


def test_sane_numbers_still_load() -> None:
    config = AdapterConfig.from_dict(
        {**LORA, "lora_alpha": -16.5, "lora_dropout": 0.1, "rank_pattern": {"q": 2}}
    )
    assert config.lora_alpha == -16.5  # type: ignore[attr-defined]


def test_json_nan_literals_parse_and_the_field_is_named(tmp_path) -> None:
    # PEFT reads configs with json.load, which accepts NaN/Infinity: we parse them too, then the field's
    # rule refuses them by name.
    path = tmp_path / "adapter_config.json"
    for literal in ("NaN", "Infinity", "-Infinity", "1e999"):
        path.write_text(json.dumps(LORA).replace('"lora_alpha": 8', f'"lora_alpha": {literal}'))
        with pytest.raises(AdapterConfigError, match="lora_alpha must be a finite number"):
            AdapterConfig.from_json_file(path)


def test_hostile_nesting_is_a_config_error() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(AdapterConfigError, match="nests too deeply"):
        parse_json(deep, source="upload")
    with pytest.raises(AdapterConfigError, match="nests deeper than 32 levels"):
        AdapterConfig.from_dict({**LORA, "loftq_config": json.loads("[" * 40 + "]" * 40)})


# -- the file and its config agree ----------------------------------------------------------------------
def _retarget(config: AdapterConfig, **changes) -> AdapterConfig:
    return AdapterConfig.from_dict({**config.to_dict(), **changes})


def test_targets_that_match_nothing_are_refused(model, lora) -> None:
    config, state = lora
    for targets in ([], ["nothing_here"], r".*\.nothing"):
        with pytest.raises(NoTargetModulesError, match=r"target_modules=.* matches no module of this base"):
            model.parse(_retarget(config, target_modules=targets), state)


def test_weights_for_modules_the_config_does_not_target(model, lora) -> None:
    config, state = lora
    with pytest.raises(
        AdapterWeightsError,
        match=r"tensors for module\(s\) the config does not target: model\.layers\.0\.self_attn\.v_proj, "
        r"model\.layers\.1\.self_attn\.v_proj",
    ):
        model.parse(_retarget(config, target_modules=["q_proj"]), state)
    with pytest.raises(AdapterWeightsError, match=r"does not target: model\.layers\.1\.self_attn\.q_proj"):
        model.parse(_retarget(config, layers_to_transform=[0], layers_pattern="layers"), state)


def test_targeted_modules_without_weights(model, lora) -> None:
    config, state = lora
    with pytest.raises(
        AdapterWeightsError, match=r"no tensors in the file: model\.layers\.0\.self_attn\.k_proj"
    ):
        model.parse(_retarget(config, target_modules=["q_proj", "v_proj", "k_proj"]), state)
    partial = {k: v for k, v in state.items() if "layers.1.self_attn.v_proj" not in k}
    with pytest.raises(
        AdapterWeightsError, match=r"no tensors in the file: model\.layers\.1\.self_attn\.v_proj;"
    ):
        model.parse(config, partial)
    assert not model.adapters  # parse never touches the model


def test_ia3_feedforward_module_without_its_vector(model, tmp_path) -> None:
    config, state = peft_files(
        tmp_path, peft.IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"])
    )
    model.parse(config, state)
    partial = {k: v for k, v in state.items() if "layers.0.mlp.down_proj" not in k}
    with pytest.raises(
        AdapterWeightsError, match=r"no tensors in the file: model\.layers\.0\.mlp\.down_proj"
    ):
        model.parse(config, partial)


# -- the probe forward -------------------------------------------------------------------------------------
def test_weights_that_overflow_when_applied_are_refused(model, lora) -> None:
    config, state = lora
    key = LAYER.format(1, "v_proj") + ".lora_B.weight"
    huge = {**state, key: state[key] * 1e30}  # finite in float32, but its outputs square to infinity
    with pytest.raises(
        AdapterWeightsError, match=r"^model\.layers\.1\.self_attn\.v_proj: on the validation probe"
    ):
        model.add("huge", (config, huge))
    assert not model.adapters


def test_the_probe_checks_the_base_dtype(tmp_path) -> None:
    config, state = peft_files(tmp_path, peft.LoraConfig(r=4, target_modules=["q_proj"]))
    key = LAYER.format(0, "q_proj") + ".lora_B.weight"
    big = {**state, key: state[key] * 1e6}  # |outputs| ~1e5: fine in float32, beyond float16's 65504
    MultiAdapterModel(tiny_llama()).parse(config, big)
    with pytest.raises(AdapterWeightsError, match=r"model\.layers\.0\.self_attn\.q_proj: on the validation"):
        MultiAdapterModel(tiny_llama().half()).parse(config, big)


def test_non_finite_weights_are_refused_from_memory_too(model, lora) -> None:
    config, state = lora
    key = LAYER.format(0, "q_proj") + ".lora_A.weight"
    bad = {**state, key: state[key].clone()}
    bad[key][0, 0] = float("nan")
    with pytest.raises(AdapterWeightsError, match="contains NaN or Inf"):
        model.add("nan", (config, bad))


def _served_effect(model: MultiAdapterModel, name: str) -> float:
    """max |adapted − base| over every adapted module, measured through the serving layers on the probe rows
    (every id of an embedding)."""
    loaded = model.adapters[name]
    worst = 0.0
    for path in set(loaded.parsed.lora) | set(loaded.parsed.ia3):
        layer = model.model.get_submodule(path)
        if isinstance(layer.base_layer, torch.nn.Embedding):
            x = torch.arange(layer.base_layer.num_embeddings)[:, None]  # (V, 1)
        else:
            x = probe_rows(layer.in_features, device=torch.device("cpu"), dtype=torch.float32)[:, None]
        with torch.no_grad():
            base = layer.base_layer(x)
            with model.rows([loaded.slot] * x.shape[0]):
                adapted = layer(x)
        worst = max(worst, float((adapted - base).abs().max()))
    return worst


@pytest.mark.parametrize(
    "config",
    [
        peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        peft.LoraConfig(r=4, target_modules=["o_proj", "up_proj"], use_dora=True),
        peft.LoraConfig(r=2, target_modules=["k_proj"], lora_bias=True, use_rslora=True),
        peft.IA3Config(target_modules=["v_proj", "down_proj"], feedforward_modules=["down_proj"]),
        peft.LoraConfig(r=4, target_modules=["embed_tokens"], use_dora=True),
    ],
    ids=["lora", "dora", "lora_bias", "ia3", "embedding_dora"],
)
def test_the_measured_effect_is_the_serving_layers_effect(tmp_path, config) -> None:
    model = MultiAdapterModel(tiny_llama(), max_adapters=2)
    loaded = model.add("a", peft_files(tmp_path, config))
    measured = loaded.parsed.probe.max_delta
    assert measured is not None and measured > 0.01
    assert measured == pytest.approx(_served_effect(model, "a"), rel=1e-4)
    assert loaded.parsed.probe.module in set(loaded.parsed.lora) | set(loaded.parsed.ia3)


def test_an_adapter_without_effect_measures_zero(model, lora) -> None:
    config, state = lora
    zero_b = {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in state.items()}
    assert model.parse(config, zero_b).probe.max_delta == 0.0


def test_prompt_tables_that_overflow_are_refused(model, tmp_path) -> None:
    config, state = peft_files(tmp_path, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    assert model.parse(config, state).probe.max_delta is None  # no base layer to compare with
    (key,) = state
    with pytest.raises(AdapterWeightsError, match="the virtual prompt: on the validation probe"):
        model.parse(config, {key: state[key] * 1e30})
