"""AdapterModel's API against PEFT: several named adapters, save layout, weighted combination, counts."""

from __future__ import annotations

import os

import peft
import pytest
import torch
from safetensors.torch import load_file
from tiny_models import batch, max_abs_diff, perturb_adapter_weights, tiny_gpt2, tiny_llama

from adapters_core import (
    AdapterModel,
    AdapterNotFoundError,
    IA3Config,
    LoraConfig,
    TaskType,
    UnsupportedError,
    get_adapter_model,
)
from adapters_core.registry import _METHODS, MethodSpec, ServingForm
from adapters_core.tuners.protocol import AdapterTuner

pytestmark = pytest.mark.filterwarnings("ignore")
TOL = 1e-4
INPUTS = batch("llama")


def logits(model, inputs=INPUTS) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def two_adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PEFT save of two LoRA adapters (r=4, "default" on q/v and "other" on q/k/o) on the tiny Llama."""
    path = str(tmp_path_factory.mktemp("two"))
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM"))
    model.add_adapter(
        "other", peft.LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "o_proj"])
    )
    perturb_adapter_weights(model, seed=3)
    model.save_pretrained(path)
    return path


def test_save_layout_and_selected_adapters(two_adapter_dir: str, tmp_path) -> None:
    assert sorted(os.listdir(two_adapter_dir)) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "other",
    ]
    model = AdapterModel.from_pretrained(tiny_llama(), two_adapter_dir)
    model.load_adapter(two_adapter_dir, "other", subfolder="other")
    model.save_pretrained(str(tmp_path / "all"))
    assert sorted(os.listdir(tmp_path / "all")) == sorted(os.listdir(two_adapter_dir))  # README.md too
    assert os.listdir(tmp_path / "all" / "other") == os.listdir(os.path.join(two_adapter_dir, "other"))
    for sub in ("", "other"):
        ours = load_file(os.path.join(tmp_path / "all", sub, "adapter_model.safetensors"))
        theirs = load_file(os.path.join(two_adapter_dir, sub, "adapter_model.safetensors"))
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    model.save_pretrained(str(tmp_path / "sel"), selected_adapters=["other"])
    assert sorted(os.listdir(tmp_path / "sel")) == ["README.md", "other"]  # PEFT writes the card at the root


def test_load_adapter_is_not_activated_and_set_adapter_switches(two_adapter_dir: str) -> None:
    reference = peft.PeftModel.from_pretrained(tiny_llama(), two_adapter_dir).eval()
    reference.load_adapter(two_adapter_dir, "other", subfolder="other")
    model = AdapterModel.from_pretrained(tiny_llama(), two_adapter_dir)
    model.load_adapter(two_adapter_dir, "other", subfolder="other")
    assert model.active_adapter == "default"
    assert max_abs_diff(logits(model), logits(reference)) <= TOL
    model.set_adapter("other")
    reference.set_adapter("other")
    other = logits(model)
    assert max_abs_diff(other, logits(reference)) <= TOL
    with pytest.raises(AdapterNotFoundError, match="no adapter named 'nope'"):
        model.set_adapter("nope")
    model.delete_adapter("other")
    assert model.active_adapter == "default"
    reference.set_adapter("default")
    assert max_abs_diff(logits(model), logits(reference)) <= TOL
    assert not any(".other" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize(
    ("combination", "svd_rank"), [("cat", None), ("linear", None), ("svd", None), ("svd", 2)]
)
def test_add_weighted_adapter_matches_peft(
    two_adapter_dir: str, combination: str, svd_rank: int | None
) -> None:
    reference = peft.PeftModel.from_pretrained(tiny_llama(), two_adapter_dir).eval()
    reference.load_adapter(two_adapter_dir, "other", subfolder="other")
    reference.add_weighted_adapter(["default", "other"], [0.7, -0.4], "mix", combination, svd_rank=svd_rank)
    reference.set_adapter("mix")
    model = AdapterModel.from_pretrained(tiny_llama(), two_adapter_dir)
    model.load_adapter(two_adapter_dir, "other", subfolder="other")
    model.add_weighted_adapter(
        ["default", "other"], [0.7, -0.4], "mix", combination_type=combination, svd_rank=svd_rank
    )
    model.set_adapter("mix")
    assert model.peft_config["mix"].r == reference.peft_config["mix"].r
    assert max_abs_diff(logits(model), logits(reference)) <= TOL
    assert max_abs_diff(logits(model), logits(tiny_llama())) > 1e-2


def test_cat_is_the_exact_weighted_sum(two_adapter_dir: str) -> None:
    """cat: ΔW = Σ w_i ΔW_i, checked layer by layer (reference §5.7)."""
    model = AdapterModel.from_pretrained(tiny_llama(), two_adapter_dir)
    model.load_adapter(two_adapter_dir, "other", subfolder="other")
    model.add_weighted_adapter(["default", "other"], [0.7, -0.4], "mix", combination_type="cat")
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    expected = 0.7 * layer.get_delta_weight("default") - 0.4 * layer.get_delta_weight("other")
    assert torch.allclose(layer.get_delta_weight("mix"), expected, atol=1e-6)


def test_ia3_add_weighted_adapter_matches_peft(tmp_path) -> None:
    model = peft.get_peft_model(tiny_gpt2(), peft.IA3Config(task_type="CAUSAL_LM"))
    model.add_adapter("b", peft.IA3Config(target_modules=["c_attn"], feedforward_modules=[]))
    perturb_adapter_weights(model, seed=5)
    model.save_pretrained(str(tmp_path))
    inputs = batch("gpt2")
    reference = peft.PeftModel.from_pretrained(tiny_gpt2(), str(tmp_path)).eval()
    reference.load_adapter(str(tmp_path), "b", subfolder="b")
    reference.add_weighted_adapter(["default", "b"], [0.6, 0.5], "mix")
    reference.set_adapter("mix")
    ours = AdapterModel.from_pretrained(tiny_gpt2(), str(tmp_path))
    ours.load_adapter(str(tmp_path), "b", subfolder="b")
    ours.add_weighted_adapter(["default", "b"], [0.6, 0.5], "mix")
    ours.set_adapter("mix")
    assert max_abs_diff(logits(ours, inputs), logits(reference, inputs)) <= TOL
    with pytest.raises(UnsupportedError, match="linearly only"):
        ours.add_weighted_adapter(["default", "b"], [0.6, 0.5], "mix2", combination_type="svd")


@pytest.mark.parametrize(
    ("make_peft", "make_ours"),
    [
        (lambda: peft.LoraConfig(r=4, task_type="CAUSAL_LM"), lambda: LoraConfig(r=4, task_type="CAUSAL_LM")),
        (
            lambda: peft.LoraConfig(r=4, use_dora=True, target_modules="all-linear"),
            lambda: LoraConfig(r=4, use_dora=True, target_modules="all-linear"),
        ),
        (lambda: peft.IA3Config(task_type="CAUSAL_LM"), lambda: IA3Config(task_type=TaskType.CAUSAL_LM)),
    ],
    ids=["lora", "dora", "ia3"],
)
def test_print_trainable_parameters_is_peft_string(make_peft, make_ours, capsys) -> None:
    peft.get_peft_model(tiny_llama(), make_peft()).print_trainable_parameters()
    expected = capsys.readouterr().out
    get_adapter_model(tiny_llama(), make_ours()).print_trainable_parameters()
    assert capsys.readouterr().out == expected
    assert expected.startswith("trainable params: ")


def test_reference_counts_from_spec(capsys) -> None:
    """reference §13.2: LoRA r=4 on q/v of the tiny Llama, and IA3 defaults."""
    get_adapter_model(tiny_llama(), LoraConfig(r=4, task_type="CAUSAL_LM")).print_trainable_parameters()
    assert (
        capsys.readouterr().out.strip()
        == "trainable params: 1,792 || all params: 108,608 || trainable%: 1.6500"
    )
    get_adapter_model(tiny_llama(), IA3Config(task_type="CAUSAL_LM")).print_trainable_parameters()
    assert (
        capsys.readouterr().out.strip()
        == "trainable params: 384 || all params: 107,200 || trainable%: 0.3582"
    )


def test_forward_attributes_and_generate_match_peft(two_adapter_dir: str) -> None:
    model = AdapterModel.from_pretrained(tiny_llama(), two_adapter_dir)
    reference = peft.PeftModel.from_pretrained(tiny_llama(), two_adapter_dir).eval()
    assert model.config.model_type == "llama"  # forwarded to the transformers model, like PEFT
    assert model.get_base_model() is model.base_model.model
    ids = INPUTS["input_ids"][:1]
    kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(model.generate(input_ids=ids, **kwargs), reference.generate(input_ids=ids, **kwargs))


def test_unload_returns_the_untouched_base(two_adapter_dir: str) -> None:
    model = AdapterModel.from_pretrained(tiny_llama(), two_adapter_dir)
    plain = model.unload()
    assert max_abs_diff(logits(plain), logits(tiny_llama())) == 0.0


class _MinimalTuner(torch.nn.Module):
    """A method with only the required protocol (like a prompt method): no merging, no weighting."""

    def __init__(self, model, config, adapter_name):
        super().__init__()
        self.model, self.peft_config, self.active_adapter = model, {adapter_name: config}, adapter_name

    def add_adapter(self, adapter_name, config): ...
    def delete_adapter(self, adapter_name): ...
    def set_adapter(self, adapter_name): ...
    def enable_adapters(self, enabled): ...
    def state_dict_to_save(self, adapter_name):
        return {}

    def load_state_dict_from_file(self, adapter_name, state): ...
    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)


def test_any_registered_method_works_and_missing_capabilities_raise(monkeypatch) -> None:
    from adapters_core.config import PeftType

    spec = MethodSpec(
        peft_type=PeftType.LORA,
        config_cls=LoraConfig,
        tuner_cls=_MinimalTuner,
        serving=ServingForm.UNSUPPORTED,
    )
    monkeypatch.setitem(_METHODS, "LORA", spec)
    model = get_adapter_model(tiny_llama(), LoraConfig(r=4))
    assert isinstance(model.base_model, AdapterTuner)
    assert max_abs_diff(logits(model), logits(tiny_llama())) == 0.0
    with pytest.raises(UnsupportedError, match="merge_adapter is not available for LORA"):
        model.merge_adapter()
    with pytest.raises(UnsupportedError, match="add_weighted_adapter is not available"):
        model.add_weighted_adapter(["default"], [1.0], "x")
