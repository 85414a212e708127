"""A merged adapter under `disable_adapter()` gives the base model (PEFT unmerges first), and afterwards the
adapter's own output again — for every layer type that merges (LoRA Linear/Embedding, DoRA, AdaLoRA, IA3)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import batch, max_abs_diff, perturb_adapter_weights, tiny_llama

from adapters_core import AdaLoraConfig, IA3Config, LoraConfig, get_adapter_model

CONFIGS = {
    "lora+embedding": LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "embed_tokens"]),
    "dora": LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["v_proj"], use_dora=True),
    "adalora": AdaLoraConfig(task_type="CAUSAL_LM", init_r=4, total_step=10, target_modules=["q_proj"]),
    "ia3": IA3Config(
        task_type="CAUSAL_LM", target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_disable_on_a_merged_adapter_gives_the_base(name: str) -> None:
    inputs = batch("llama")
    with torch.no_grad():
        base = tiny_llama()(**inputs).logits
        model = get_adapter_model(tiny_llama(), CONFIGS[name])
        perturb_adapter_weights(model, seed=3)
        model.eval()
        adapted = model(**inputs).logits
        assert max_abs_diff(adapted, base) > 1e-3
        model.merge_adapter()
        assert max_abs_diff(model(**inputs).logits, adapted) < 1e-4
        with model.disable_adapter():
            assert max_abs_diff(model(**inputs).logits, base) < 1e-4
        assert max_abs_diff(model(**inputs).logits, adapted) < 1e-4
