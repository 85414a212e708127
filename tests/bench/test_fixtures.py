"""The benchmark's files (bench/serving/fixtures.py) are what they claim: PEFT-format LoRA adapters that real
PEFT loads key for key and that change the output, the same for the same seed; a base without EOS; a merged
checkpoint equal to the base with adapter 0."""

from __future__ import annotations

import json

import peft
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.serving import fixtures as fx
from bench.serving.presets import PRESETS

PRESET = PRESETS["micro"]


def ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(2, PRESET.base.vocab_size, (2, 7), generator=torch.Generator().manual_seed(seed))


def test_each_adapter_has_peft_own_keys_and_shapes(micro_files) -> None:
    spec = PRESET.adapter_spec()
    for i, folder in enumerate(micro_files.adapter_dirs()):
        rank = spec.rank_of(i)
        config = json.loads((folder / "adapter_config.json").read_text())
        assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", rank, 2 * rank)
        reference = peft.get_peft_model(
            AutoModelForCausalLM.from_pretrained(micro_files.base_dir),
            peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(spec.target_modules)),
        )
        expected = {k: tuple(v.shape) for k, v in peft.get_peft_model_state_dict(reference).items()}
        ours = {k: tuple(v.shape) for k, v in load_file(folder / "adapter_model.safetensors").items()}
        assert ours == expected


def test_real_peft_loads_every_adapter_and_each_changes_the_output(micro_files) -> None:
    base = AutoModelForCausalLM.from_pretrained(micro_files.base_dir)
    with torch.no_grad():
        plain = base(ids()).logits
        outputs = []
        for folder in micro_files.adapter_dirs():
            model = peft.PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(micro_files.base_dir), folder
            )
            outputs.append(model(ids()).logits)
    for out in outputs:
        assert (out - plain).abs().max() > 1e-2
    assert (outputs[0] - outputs[1]).abs().max() > 1e-2


def test_the_same_seed_writes_the_same_adapters(tmp_path, micro_files) -> None:
    model = AutoModelForCausalLM.from_pretrained(micro_files.base_dir)
    again = fx.write_adapters(model, PRESET.adapter_spec(), micro_files.base_dir, tmp_path)
    for mine, theirs in zip(again, micro_files.adapter_dirs()):
        a, b = load_file(mine / "adapter_model.safetensors"), load_file(theirs / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other_seed = fx.AdapterSpec(n_adapters=1, ranks=PRESET.ranks, target_modules=PRESET.targets, seed=2)
    (other,) = fx.write_adapters(model, other_seed, micro_files.base_dir, tmp_path / "other")
    first = load_file(again[0] / "adapter_model.safetensors")
    assert not all(
        torch.equal(first[k], v) for k, v in load_file(other / "adapter_model.safetensors").items()
    )


def test_the_base_has_no_eos_and_a_word_is_a_token(micro_files) -> None:
    tokenizer = AutoTokenizer.from_pretrained(micro_files.base_dir)
    model = AutoModelForCausalLM.from_pretrained(micro_files.base_dir)
    assert tokenizer.eos_token_id is None
    assert model.config.eos_token_id is None and model.generation_config.eos_token_id is None
    words = fx.words(PRESET.base.vocab_size)
    assert len(tokenizer) == PRESET.base.vocab_size
    assert tokenizer(" ".join(words[:5]), add_special_tokens=False)["input_ids"] == [2, 3, 4, 5, 6]


def test_the_merged_checkpoint_is_the_base_with_adapter_zero(micro_files) -> None:
    merged = AutoModelForCausalLM.from_pretrained(micro_files.merged_dir)
    first = next(iter(micro_files.adapter_dirs()))
    with_adapter = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(micro_files.base_dir), first
    )
    with torch.no_grad():
        diff = (merged(ids(1)).logits - with_adapter(ids(1)).logits).abs().max()
    assert diff < 1e-4


@pytest.mark.parametrize("targets", [("q_proj",), ("q_proj", "v_proj", "down_proj")])
def test_lora_numbers_count_a_and_b_per_unit_of_rank(targets) -> None:
    base = PRESET.base  # hidden 64, 2 layers, 2 KV heads of 16: v_proj is 64 -> 32, down_proj 128 -> 64
    per_layer = {"q_proj": 64 + 64, "v_proj": 64 + 32, "down_proj": 128 + 64}
    assert base.lora_numbers(targets) == 2 * sum(per_layer[t] for t in targets)
