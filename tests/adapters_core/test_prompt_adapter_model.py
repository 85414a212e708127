"""The prompt family through the public API: `AdapterModel.from_pretrained`, `get_adapter_model`,
`save_pretrained`, `generate`, `print_trainable_parameters` — against PEFT in both directions."""

from __future__ import annotations

import peft
import pytest
import torch
from tiny_models import BUILDERS, batch, max_abs_diff, perturb_adapter_weights

from adapters_core import (
    AdapterConfigError,
    AdapterModel,
    AdapterShapeError,
    AdaptionPromptConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_adapter_model,
)

TASK = {"llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM", "bert": "SEQ_CLS", "t5": "SEQ_2_SEQ_LM"}
CASES = [
    ("llama", peft.PromptTuningConfig, PromptTuningConfig, {"num_virtual_tokens": 4}),
    (
        "bert",
        peft.PromptEncoderConfig,
        PromptEncoderConfig,
        {"num_virtual_tokens": 4, "encoder_hidden_size": 16},
    ),
    ("t5", peft.PrefixTuningConfig, PrefixTuningConfig, {"num_virtual_tokens": 4, "prefix_projection": True}),
    ("gpt2", peft.PrefixTuningConfig, PrefixTuningConfig, {"num_virtual_tokens": 3}),
    ("llama", peft.AdaptionPromptConfig, AdaptionPromptConfig, {"adapter_len": 4, "adapter_layers": 2}),
]


@torch.no_grad()
def perturb_heads(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(9)
    for name, p in model.named_parameters():
        if "modules_to_save" in name:
            p.add_(0.5 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(("base", "peft_cls", "ours_cls", "kw"), CASES)
def test_round_trip_through_adapter_model(base, peft_cls, ours_cls, kw, tmp_path) -> None:
    inputs = batch(base)
    # PEFT saves -> AdapterModel.from_pretrained
    pm = peft.get_peft_model(BUILDERS[base](), peft_cls(task_type=TASK[base], **kw))
    perturb_adapter_weights(pm, seed=4)
    perturb_heads(pm)
    pm.eval().save_pretrained(tmp_path / "peft")
    loaded = AdapterModel.from_pretrained(BUILDERS[base](), tmp_path / "peft")
    assert (
        loaded.get_nb_trainable_parameters()
        == peft.PeftModel.from_pretrained(
            BUILDERS[base](), str(tmp_path / "peft")
        ).get_nb_trainable_parameters()
    )
    with torch.no_grad():
        assert max_abs_diff(loaded(**inputs).logits, pm(**inputs).logits) <= 1e-4
    # get_adapter_model (training form) -> save_pretrained -> PEFT loads
    ours = get_adapter_model(BUILDERS[base](), ours_cls(task_type=TASK[base], **kw))
    assert ours.get_nb_trainable_parameters() == pm.get_nb_trainable_parameters()
    perturb_adapter_weights(ours, seed=5)
    perturb_heads(ours)
    ours.eval().save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(BUILDERS[base](), str(tmp_path / "ours")).eval()
    with torch.no_grad():
        assert max_abs_diff(ours(**inputs).logits, theirs(**inputs).logits) <= 1e-4
    if base != "bert":
        gen_inputs = {k: v for k, v in inputs.items() if k != "decoder_input_ids"}
        assert ours.generate(**gen_inputs, max_new_tokens=4).shape[0] == 3


def test_print_trainable_parameters_like_peft(capsys) -> None:
    get_adapter_model(
        BUILDERS["llama"](), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    ).print_trainable_parameters()
    get_adapter_model(
        BUILDERS["llama"](), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    ).print_trainable_parameters()
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "trainable params: 256 || all params: 107,072 || trainable%: 0.2391",
        "trainable params: 512 || all params: 107,328 || trainable%: 0.4770",
    ]


def test_prompt_adapter_cannot_load_as_trainable_and_bad_files_leave_the_model_alone(tmp_path) -> None:
    pm = peft.get_peft_model(
        BUILDERS["bert"](), peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)
    )
    pm.save_pretrained(tmp_path)
    with pytest.raises(AdapterConfigError, match="cannot be loaded as trainable"):
        AdapterModel.from_pretrained(BUILDERS["bert"](), tmp_path, is_trainable=True)
    # A 64-wide adapter on a 32-wide BERT: refused, and the classifier is unwrapped again.
    from transformers import BertConfig, BertForSequenceClassification

    narrow = BertForSequenceClassification(
        BertConfig(
            vocab_size=256,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            num_labels=3,
        )
    )
    with pytest.raises(AdapterShapeError, match="token_dim=64"):
        AdapterModel.from_pretrained(narrow, tmp_path)
    assert isinstance(narrow.classifier, torch.nn.Linear)
