"""MultiAdapterModel.add takes the ParsedAdapter its `parse` returned (no second parse), and a model without
room answers adapters_core's own `AdapterCapacityError` (slots or pools), having written nothing."""

from __future__ import annotations

import os

import peft
import pytest
import torch
from safetensors.torch import load_file
from tiny_models import perturb_adapter_weights, tiny_llama

from adapters_core.config import AdapterConfig
from adapters_core.errors import AdapterCapacityError
from adapters_core.multi import MultiAdapterModel
from adapters_core.multi import model as model_module

pytestmark = pytest.mark.filterwarnings("ignore")
IDS = torch.tensor([[5, 17, 33, 80, 101, 7]])  # (1, 6)


def lora(
    tmp_path, rank: int, seed: int, modules_to_save: list[str] | None = None
) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
    """A LoRA on q/v as real PEFT saves it, perturbed so that it changes the output."""
    config = peft.LoraConfig(r=rank, target_modules=["q_proj", "v_proj"], modules_to_save=modules_to_save)
    model = peft.get_peft_model(tiny_llama(), config)
    perturb_adapter_weights(model, seed)
    with torch.no_grad():  # a module copy equal to the base changes nothing (and is not kept): change it
        for name, param in model.named_parameters():
            if "modules_to_save" in name:
                param.add_(0.1)
    path = str(tmp_path / f"lora-{rank}-{seed}-{bool(modules_to_save)}")
    model.save_pretrained(path)
    return AdapterConfig.from_pretrained(path), load_file(os.path.join(path, "adapter_model.safetensors"))


def rank_units(n: int) -> int:
    """`adapter_memory_bytes` giving each adapted layer's float32 pool room for `n` rank units."""
    base = tiny_llama()
    return (
        n * 4 * sum(m.in_features + m.out_features for m in base.modules() if isinstance(m, torch.nn.Linear))
    )


def logits(model: MultiAdapterModel, name: str | None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, adapter_names=[name]).logits[0]


def test_add_takes_the_parsed_adapter_without_parsing_again(tmp_path, monkeypatch) -> None:
    config, state = lora(tmp_path, 4, seed=1)
    reference = MultiAdapterModel(tiny_llama(), max_adapters=2)
    reference.add("a", (config, state))
    model = MultiAdapterModel(tiny_llama(), max_adapters=2)
    parsed = model.parse(config, state)
    calls: list[int] = []
    real = model_module.parse_adapter
    monkeypatch.setattr(model_module, "parse_adapter", lambda *a, **k: calls.append(1) or real(*a, **k))
    model.add("a", parsed)
    assert calls == []  # the one parse was validation's
    assert model.adapters["a"].parsed is parsed
    out = logits(model, "a")
    assert torch.equal(out, logits(reference, "a"))
    assert not torch.allclose(out, logits(model, None))  # the adapter changes the output


def test_full_pools_are_a_capacity_error_and_nothing_is_written(tmp_path) -> None:
    model = MultiAdapterModel(
        tiny_llama(), max_adapters=4, adapter_memory_bytes=rank_units(24), rank_capacity=16
    )
    big, big2 = lora(tmp_path, 16, seed=1), lora(tmp_path, 16, seed=2)
    model.add("big", big)
    before = logits(model, "big")
    with pytest.raises(AdapterCapacityError, match="does not fit") as info:
        model.add("big2", big2)
    assert type(info.value.__cause__).__module__ == "kernels.errors"  # the kernels' error, as adapters_core's
    assert list(model.adapters) == ["big"]
    assert torch.equal(logits(model, "big"), before)
    model.remove("big")
    model.add("big2", big2)  # the room freed by remove is usable: the failed add left no pages behind
    assert list(model.adapters) == ["big2"]


def test_full_slots_are_a_capacity_error(tmp_path) -> None:
    model = MultiAdapterModel(tiny_llama(), max_adapters=1)
    model.add("a", lora(tmp_path, 4, seed=1))
    with pytest.raises(AdapterCapacityError, match="slots are in use"):
        model.add("b", lora(tmp_path, 4, seed=2))
    assert list(model.adapters) == ["a"]


def test_module_copies_count_against_the_unpooled_budget(tmp_path) -> None:
    # an lm_head copy (256 x 64 float32 = 64 KiB) fits once into 100 kB, not twice; the pools have room
    model = MultiAdapterModel(tiny_llama(), max_adapters=4, unpooled_memory_bytes=100_000)
    head_a = lora(tmp_path, 4, seed=1, modules_to_save=["lm_head"])
    head_b = lora(tmp_path, 4, seed=2, modules_to_save=["lm_head"])
    model.add("a", head_a)
    with pytest.raises(AdapterCapacityError, match="unpooled_memory_bytes"):
        model.add("b", head_b)
    assert list(model.adapters) == ["a"]
    model.add("plain", lora(tmp_path, 4, seed=3))  # no module copy: only the pools are asked
    model.remove("a")
    model.add("b", head_b)
    assert sorted(model.adapters) == ["b", "plain"]
