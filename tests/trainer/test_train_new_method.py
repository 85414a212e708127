"""Issue 13: a method registered in ONE place (its `MethodSpec`) is parsed, trained, saved, loaded and served.

The toy method is LoRA's layers under a new `peft_type` ("TOY_LORA") and a new `--method` name
("toy-lora"). Nothing else in adapters_core or the trainer knows it: config parsing, AdapterModel's tuner
dispatch, MultiAdapterModel's parse and the trainer's method lookup all read the method table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from adapters_core import AdapterConfig, AdapterConfigError, AdapterModel, LoraConfig, MultiAdapterModel
from adapters_core.methods.lora import LoraTuner
from adapters_core.registry import (
    MethodSpec,
    ServingForm,
    TrainName,
    get_method,
    register_method,
    registered_methods,
    unregister_method,
)
from trainer.config import TrainConfig
from trainer.errors import TrainConfigError
from trainer.run import train


@dataclass
class ToyLoraConfig(LoraConfig):
    PEFT_TYPE: ClassVar[str] = "TOY_LORA"


class ToyLoraTuner(LoraTuner):
    """LoRA's tuner under another name: the point is the registration, not new math."""


TOY = MethodSpec(
    peft_type="TOY_LORA",
    config_cls=ToyLoraConfig,
    tuner_cls=ToyLoraTuner,
    serving=ServingForm.LORA,
    train_names=(TrainName("toy-lora", {"lora_alpha": 32}, learning_rate=3e-2),),
)


@pytest.fixture
def toy_method() -> Iterator[MethodSpec]:
    before = registered_methods()
    register_method(TOY)
    try:
        yield TOY
    finally:
        unregister_method(TOY.peft_type)
        assert registered_methods() == before  # the table is exactly as it was


def _inputs() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[5, 9, 12, 7, 30, 4], [8, 3, 21, 6, 15, 10]])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _base(bases) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(bases["llama"]).eval()


def test_a_method_registered_in_one_place_is_parsed_trained_saved_and_served(
    toy_method, bases, task_data, tmp_path
):
    # parsed: from a dict, through the table
    cfg = AdapterConfig.from_dict(
        {"peft_type": "TOY_LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    )
    assert type(cfg) is ToyLoraConfig and cfg.to_dict()["peft_type"] == "TOY_LORA"

    # trained: `--method toy-lora` resolves through the table (its implied options and learning rate)
    train_file, _ = task_data["causal-lm"]
    run = TrainConfig(
        base_model=str(bases["llama"]),
        method="toy-lora",
        task="causal-lm",
        train_file=str(train_file),
        output_dir=str(tmp_path / "out"),
        num_epochs=1,
        batch_size=16,
        progress=False,
        method_config={"r": 2, "target_modules": ["q_proj", "v_proj"]},
    )
    assert run.lr == 3e-2
    out = train(run).output_dir

    # saved in PEFT's format under the new peft_type, and read back as the toy config
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["peft_type"] == "TOY_LORA" and saved["lora_alpha"] == 32 and saved["r"] == 2
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in weights.items())
    assert type(AdapterConfig.from_pretrained(out)) is ToyLoraConfig

    # loaded into AdapterModel: the toy tuner, and the trained adapter changes the output
    inputs = _inputs()
    with torch.no_grad():
        base_logits = _base(bases)(**inputs).logits
        model = AdapterModel.from_pretrained(_base(bases), str(out)).eval()
        assert isinstance(model.base_model, ToyLoraTuner)
        ours = model(**inputs).logits
    assert (ours - base_logits).abs().max() > 1e-3

    # save -> load round-trips the same adapter
    model.save_pretrained(str(tmp_path / "again"))
    again = load_file(str(tmp_path / "again" / "adapter_model.safetensors"))
    assert again.keys() == weights.keys() and all(again[k].equal(weights[k]) for k in weights)
    with torch.no_grad():
        reloaded = AdapterModel.from_pretrained(_base(bases), str(tmp_path / "again")).eval()
        assert torch.equal(reloaded(**inputs).logits, ours)

    # served: MultiAdapterModel parses it as LoRA-like (the spec's serving form) and a mixed batch matches
    multi = MultiAdapterModel(_base(bases))
    loaded = multi.add("toy", str(out))
    assert loaded.config.peft_type == "TOY_LORA"
    with torch.no_grad():
        mixed = multi(**inputs, adapter_names=["toy", None]).logits
    torch.testing.assert_close(mixed[0], ours[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mixed[1], base_logits[1], atol=1e-5, rtol=1e-5)


def test_an_unregistered_method_is_refused_everywhere():
    with pytest.raises(AdapterConfigError, match=r"unknown or unsupported peft_type 'TOY_LORA'.*'LORA'"):
        AdapterConfig.from_dict({"peft_type": "TOY_LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q"]})
    with pytest.raises(AdapterConfigError, match="TOY_LORA"):
        get_method("TOY_LORA")
    with pytest.raises(TrainConfigError, match="unknown method 'toy-lora'; choose one of lora, dora"):
        from trainer.config import resolve_config

        resolve_config(
            {
                "base_model": "b",
                "method": "toy-lora",
                "task": "causal-lm",
                "train_file": "t",
                "output_dir": "o",
            },
            config_file=None,
            environ={},
        )
