"""AdaLoRA → plain LoRA conversion is exact (reference §7.3), and PEFT agrees with the converted file."""

from __future__ import annotations

import peft
import pytest
import torch
from parity_table import LLAMA_MASKS, Case, prepare_adapter
from tiny_models import batch, max_abs_diff, tiny_llama

from adapters_core import AdapterConfig, AdapterModel
from adapters_core.methods.adalora import adalora_to_lora
from adapters_core.weights_io import load_adapter_weights, save_adapter_weights

pytestmark = pytest.mark.filterwarnings("ignore")


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch("llama")).logits


@pytest.mark.parametrize("lora_alpha", [12, 0])
def test_conversion_reproduces_the_loaded_adalora(tmp_path, lora_alpha: int) -> None:
    kwargs = {
        "init_r": 6,
        "target_r": 3,
        "lora_alpha": lora_alpha,
        "total_step": 10,
        "target_modules": ["q_proj", "v_proj"],
    }
    case = Case("masks", "llama", "AdaLoraConfig", kwargs, LLAMA_MASKS)
    config = peft.AdaLoraConfig(**kwargs, rank_pattern=dict(LLAMA_MASKS))
    model = peft.get_peft_model(tiny_llama(), config)
    prepare_adapter(model, case)
    model.save_pretrained(str(tmp_path / "adalora"))
    adalora = _logits(AdapterModel.from_pretrained(tiny_llama(), str(tmp_path / "adalora")))

    lora_config, state = adalora_to_lora(
        AdapterConfig.from_pretrained(str(tmp_path / "adalora")),
        load_adapter_weights(str(tmp_path / "adalora")),
    )
    lora_config.save_pretrained(str(tmp_path / "lora"))
    save_adapter_weights(state, str(tmp_path / "lora"))
    assert state["base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"].shape == (
        2,
        64,
    )  # the kept rank, from the mask
    ours = _logits(AdapterModel.from_pretrained(tiny_llama(), str(tmp_path / "lora")))
    theirs = _logits(peft.PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "lora")).eval())
    assert max_abs_diff(ours, adalora) <= 1e-5
    assert max_abs_diff(theirs, adalora) <= 1e-5
    assert max_abs_diff(adalora, _logits(tiny_llama())) > 1e-2
