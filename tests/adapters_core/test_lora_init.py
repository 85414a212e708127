"""A freshly created adapter is the identity, as PEFT initialises it (LoRA B = 0, DoRA m = ||W||, IA3 l = 1)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import BUILDERS, batch, max_abs_diff

from adapters_core import AdaLoraConfig, IA3Config, LoraConfig, get_adapter_model

pytestmark = pytest.mark.filterwarnings("ignore")
CONFIGS = {
    "lora": lambda: LoraConfig(r=4, target_modules="all-linear"),
    "lora_gaussian_embedding": lambda: LoraConfig(r=4, init_lora_weights="gaussian"),
    "dora": lambda: LoraConfig(r=4, use_dora=True, target_modules="all-linear"),
    "adalora": lambda: AdaLoraConfig(init_r=4, total_step=10),
    "ia3": lambda: IA3Config(),
}


@pytest.mark.parametrize("method", sorted(CONFIGS))
@pytest.mark.parametrize("base", ["llama", "gpt2"])
def test_fresh_adapter_is_identity(method: str, base: str) -> None:
    inputs = batch(base)
    with torch.no_grad():
        expected = BUILDERS[base]()(**inputs).logits
        model = get_adapter_model(BUILDERS[base](), CONFIGS[method]()).eval()
        assert max_abs_diff(model(**inputs).logits, expected) <= 1e-5
    assert model.get_nb_trainable_parameters()[0] > 0


def test_init_false_is_not_identity() -> None:
    inputs = batch("llama")
    with torch.no_grad():
        model = get_adapter_model(BUILDERS["llama"](), LoraConfig(r=4, init_lora_weights=False)).eval()
        assert max_abs_diff(model(**inputs).logits, BUILDERS["llama"]()(**inputs).logits) > 1e-4
