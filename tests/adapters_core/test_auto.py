"""AutoAdapterModel*: the base model comes from the adapter config's base_model_name_or_path (reference §13.4)."""

from __future__ import annotations

import json
import os

import peft
import pytest
import torch
from tiny_models import batch, max_abs_diff, perturb_adapter_weights, tiny_bert, tiny_llama
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from adapters_core import (
    AdapterConfigError,
    AdapterModelForCausalLM,
    AdapterModelForSequenceClassification,
    AutoAdapterModel,
    AutoAdapterModelForCausalLM,
    AutoAdapterModelForSequenceClassification,
)

pytestmark = pytest.mark.filterwarnings("ignore")


def _adapter_on_saved_base(tmp_path, build, auto_cls, task_type) -> tuple[str, str]:
    base_dir, adapter_dir = str(tmp_path / "base"), str(tmp_path / "adapter")
    build().save_pretrained(base_dir)
    base = auto_cls.from_pretrained(base_dir)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, task_type=task_type))
    perturb_adapter_weights(model)
    model.save_pretrained(adapter_dir)
    return base_dir, adapter_dir


def _logits(model, kind: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch(kind)).logits


def test_causal_lm_loads_its_base_then_the_adapter(tmp_path) -> None:
    base_dir, adapter_dir = _adapter_on_saved_base(tmp_path, tiny_llama, AutoModelForCausalLM, "CAUSAL_LM")
    with open(os.path.join(adapter_dir, "adapter_config.json")) as fh:
        assert json.load(fh)["base_model_name_or_path"] == base_dir
    model = AutoAdapterModelForCausalLM.from_pretrained(adapter_dir)
    assert isinstance(model, AdapterModelForCausalLM)
    reference = peft.AutoPeftModelForCausalLM.from_pretrained(adapter_dir).eval()
    assert max_abs_diff(_logits(model, "llama"), _logits(reference, "llama")) <= 1e-4
    with pytest.raises(
        AdapterConfigError, match="task_type is 'CAUSAL_LM', which AutoAdapterModelForSequenceClassification"
    ):
        AutoAdapterModelForSequenceClassification.from_pretrained(adapter_dir)
    with pytest.raises(AdapterConfigError, match="AutoAdapterModel serves adapters without a task type"):
        AutoAdapterModel.from_pretrained(adapter_dir)


def test_sequence_classification_head_comes_back(tmp_path) -> None:
    _, adapter_dir = _adapter_on_saved_base(
        tmp_path, tiny_bert, AutoModelForSequenceClassification, "SEQ_CLS"
    )
    model = AutoAdapterModelForSequenceClassification.from_pretrained(adapter_dir)
    assert isinstance(model, AdapterModelForSequenceClassification)
    reference = peft.AutoPeftModelForSequenceClassification.from_pretrained(adapter_dir).eval()
    assert max_abs_diff(_logits(model, "bert"), _logits(reference, "bert")) <= 1e-4


def test_no_task_type_uses_auto_mapping_and_no_base_is_an_error(tmp_path) -> None:
    _, adapter_dir = _adapter_on_saved_base(tmp_path, tiny_llama, AutoModelForCausalLM, None)
    model = AutoAdapterModel.from_pretrained(adapter_dir)
    assert type(model.get_base_model()).__name__ == "LlamaForCausalLM"
    reference = peft.AutoPeftModel.from_pretrained(adapter_dir).eval()
    assert max_abs_diff(_logits(model, "llama"), _logits(reference, "llama")) <= 1e-4

    config_path = os.path.join(adapter_dir, "adapter_config.json")
    with open(config_path) as fh:
        data = json.load(fh)
    data["base_model_name_or_path"] = None
    with open(config_path, "w") as fh:
        json.dump(data, fh)
    with pytest.raises(AdapterConfigError, match="has no base_model_name_or_path"):
        AutoAdapterModel.from_pretrained(adapter_dir)


def test_peft_keywords_config_import_allowlist_and_base_model_kwargs(tmp_path, monkeypatch) -> None:
    """PEFT's AutoPeftModel keywords: `config` overrides the file's, `import_allowlist` widens `auto_mapping`'s
    packages, other keywords (here `dtype`) go to the base model's from_pretrained."""
    _, adapter_dir = _adapter_on_saved_base(tmp_path, tiny_llama, AutoModelForCausalLM, None)
    (tmp_path / "my_bases.py").write_text("from transformers import LlamaForCausalLM as MyLlama\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config_path = os.path.join(adapter_dir, "adapter_config.json")
    with open(config_path) as fh:
        data = json.load(fh)
    data["auto_mapping"] = {"base_model_class": "MyLlama", "parent_library": "my_bases"}
    with open(config_path, "w") as fh:
        json.dump(data, fh)
    with pytest.raises(AdapterConfigError, match="import_allowlist"):
        AutoAdapterModel.from_pretrained(adapter_dir)
    with pytest.raises(ValueError, match="import allowlist"):
        peft.AutoPeftModel.from_pretrained(adapter_dir)
    model = AutoAdapterModel.from_pretrained(adapter_dir, import_allowlist=["my_bases"], dtype=torch.float64)
    reference = peft.AutoPeftModel.from_pretrained(
        adapter_dir, import_allowlist=["my_bases"], dtype=torch.float64
    )
    assert model.get_base_model().dtype == torch.float64 == reference.get_base_model().dtype
    assert max_abs_diff(_logits(model, "llama"), _logits(reference.eval(), "llama")) <= 1e-8

    from adapters_core import LoraConfig

    override = LoraConfig.from_pretrained(adapter_dir)
    override.lora_alpha = 2 * override.lora_alpha  # a visibly different adapter from the same weights
    doubled = AutoAdapterModel.from_pretrained(adapter_dir, config=override, import_allowlist=["my_bases"])
    assert doubled.peft_config["default"].lora_alpha == override.lora_alpha
    assert max_abs_diff(_logits(doubled, "llama"), _logits(model.float(), "llama")) > 1e-3
