"""`adapter_model.bin` (PEFT's default format until late 2023) loads by default as PEFT loads it:
`torch.load(weights_only=True)`, never full unpickling. A pickle that would run code is refused unexecuted."""

from __future__ import annotations

import os

import peft
import pytest
import torch
from tiny_models import batch, max_abs_diff, perturb_adapter_weights, tiny_gpt2, tiny_llama

from adapters_core import AdapterModel, AdapterWeightsError, MultiAdapterModel, UnsafeFormatError

CONFIGS = {
    "lora-llama": (tiny_llama, "llama", lambda: peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])),
    "lora-bias-gpt2": (tiny_gpt2, "gpt2", lambda: peft.LoraConfig(r=4, target_modules=["c_attn"], bias="all")),
    "ia3-gpt2": (tiny_gpt2, "gpt2", lambda: peft.IA3Config(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"])),
}  # fmt: skip


def _peft_bin(tmp_path, case: str) -> tuple[str, torch.Tensor]:
    """A directory PEFT wrote with `safe_serialization=False`, and PEFT's logits loading it back."""
    build, kind, make_config = CONFIGS[case]
    trained = peft.get_peft_model(build(), make_config())
    perturb_adapter_weights(trained)
    path = str(tmp_path / case)
    trained.save_pretrained(path, safe_serialization=False)
    assert sorted(os.listdir(path)) == ["README.md", "adapter_config.json", "adapter_model.bin"]
    reference = peft.PeftModel.from_pretrained(build(), path).eval()
    with torch.no_grad():
        want = reference(**batch(kind)).logits
        assert max_abs_diff(want, build()(**batch(kind)).logits) > 1e-3  # the adapter changes the output
    return path, want


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_peft_bin_loads_by_default_with_peft_outputs(case: str, tmp_path) -> None:
    path, want = _peft_bin(tmp_path, case)
    build, kind, _ = CONFIGS[case]
    loaded = AdapterModel.from_pretrained(build(), path)
    with torch.no_grad():
        assert max_abs_diff(loaded(**batch(kind)).logits, want) < 1e-5


def test_peft_bin_in_the_multi_adapter_model(tmp_path) -> None:
    path, want = _peft_bin(tmp_path, "lora-llama")
    multi = MultiAdapterModel(tiny_llama())
    multi.add("old", path)
    inputs = batch("llama")
    with torch.no_grad():
        got = multi(**inputs, adapter_names=["old"] * inputs["input_ids"].shape[0]).logits
    assert max_abs_diff(got, want) < 1e-5


def test_pickle_refused_when_the_caller_takes_safetensors_only(tmp_path) -> None:
    path, _ = _peft_bin(tmp_path, "lora-llama")
    with pytest.raises(UnsafeFormatError, match=r"adapter_model\.bin.*safetensors only"):
        AdapterModel.from_pretrained(tiny_llama(), path, allow_pickle=False)


class _RunsCode:
    """Unpickling this creates a directory: the witness that code ran."""

    def __init__(self, witness: str) -> None:
        self.witness = witness

    def __reduce__(self):
        return (os.mkdir, (self.witness,))


def test_pickle_that_runs_code_is_refused_and_never_executed(tmp_path) -> None:
    path, _ = _peft_bin(tmp_path, "lora-llama")
    state = torch.load(os.path.join(path, "adapter_model.bin"), weights_only=True)
    witness = str(tmp_path / "code-ran")
    state["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = _RunsCode(witness)
    torch.save(state, os.path.join(path, "adapter_model.bin"))
    base = tiny_llama()
    with pytest.raises(
        AdapterWeightsError, match=r"holds objects other than tensors.*refused without being executed"
    ):
        AdapterModel.from_pretrained(base, path)
    with pytest.raises(AdapterWeightsError, match="refused without being executed"):
        MultiAdapterModel(tiny_llama()).add("evil", path)
    assert not os.path.exists(witness)
    with torch.no_grad():
        assert max_abs_diff(base(**batch("llama")).logits, tiny_llama()(**batch("llama")).logits) == 0.0
