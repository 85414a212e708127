"""Adapters over bitsandbytes 4-bit and 8-bit bases (QLoRA), and `prepare_model_for_kbit_training`, as PEFT.

bitsandbytes' CPU backend runs here: the tiny Llama is saved and reloaded through transformers'
`BitsAndBytesConfig` (what a user does), and real PEFT on an identically quantized copy is the oracle.
"""

from __future__ import annotations

import warnings

import peft
import pytest
import torch
import transformers
from tiny_models import batch, max_abs_diff, perturb_adapter_weights, tiny_llama

import adapters_core
from adapters_core import AdapterModel, UnsupportedError, get_adapter_model, prepare_model_for_kbit_training

bnb = pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.filterwarnings("ignore")

BITS = ["4bit", "8bit"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("tiny-llama"))
    tiny_llama().save_pretrained(path)
    return path


def quantized(base_dir: str, bits: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    if bits == "4bit":
        config = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype)
    else:
        config = transformers.BitsAndBytesConfig(load_in_8bit=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForCausalLM.from_pretrained(
            base_dir, quantization_config=config, device_map="cpu", dtype=dtype
        )
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit if bits == "4bit" else bnb.nn.Linear8bitLt)
    return model.eval()


METHODS = {
    "lora": lambda: peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]),
    "dora": lambda: peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True),
    "ia3": lambda: peft.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
    "adalora": lambda: peft.AdaLoraConfig(init_r=4, target_r=2, total_step=10, target_modules=["q_proj", "v_proj"]),
}  # fmt: skip


def peft_adapter(path: str, method: str) -> str:
    """A PEFT adapter trained (perturbed) on the full-precision base, as QLoRA adapters are shared."""
    model = peft.get_peft_model(tiny_llama(), METHODS[method]())
    perturb_adapter_weights(model)
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("bits", BITS)
def test_adapter_over_quantized_base_gives_peft_outputs(base_dir, bits: str, method: str, tmp_path) -> None:
    path = peft_adapter(str(tmp_path), method)
    inputs = batch("llama")
    reference = peft.PeftModel.from_pretrained(quantized(base_dir, bits), path).eval()
    with torch.no_grad():
        want = reference(**inputs).logits
        assert max_abs_diff(want, quantized(base_dir, bits)(**inputs).logits) > 1e-3
        ours = AdapterModel.from_pretrained(quantized(base_dir, bits), path)
        assert max_abs_diff(ours(**inputs).logits, want) < 1e-5


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("bits", BITS)
def test_lora_merges_into_quantized_layers_as_peft(base_dir, bits: str, method: str, tmp_path) -> None:
    """Dequantize, add ΔW, re-quantize: the merged model stays k-bit and equals PEFT's merged model."""
    path = peft_adapter(str(tmp_path), method)
    inputs = batch("llama")
    with torch.no_grad():
        want = (
            peft.PeftModel.from_pretrained(quantized(base_dir, bits), path)
            .merge_and_unload()(**inputs)
            .logits
        )
        ours = AdapterModel.from_pretrained(quantized(base_dir, bits), path)
        unmerged = ours(**inputs).logits
        merged = ours.merge_and_unload()
        assert isinstance(merged.model.layers[0].self_attn.q_proj, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))
        got = merged(**inputs).logits
    assert max_abs_diff(got, want) < 1e-5
    assert max_abs_diff(got, unmerged) < 0.5  # only re-quantization rounding, not a lost or doubled adapter
    assert max_abs_diff(got, quantized(base_dir, bits)(**inputs).logits) > 1e-3


@pytest.mark.parametrize("method", ["ia3", "adalora"])
def test_other_methods_refuse_to_merge_into_quantized_layers(base_dir, method: str, tmp_path) -> None:
    path = peft_adapter(str(tmp_path), method)
    with pytest.raises((ValueError, NotImplementedError)):  # PEFT cannot merge these either
        peft.PeftModel.from_pretrained(quantized(base_dir, "4bit"), path).merge_and_unload()
    ours = AdapterModel.from_pretrained(quantized(base_dir, "4bit"), path)
    with torch.no_grad():
        before = ours(**batch("llama")).logits
    with pytest.raises(UnsupportedError, match=r"cannot merge .* into a bitsandbytes 4bit layer"):
        ours.merge_and_unload()
    with torch.no_grad():
        assert max_abs_diff(ours(**batch("llama")).logits, before) == 0.0  # nothing was half-merged


def _prepared_state(model: torch.nn.Module) -> dict:
    return {
        "params": {n: (p.dtype, p.requires_grad) for n, p in model.named_parameters()},
        "checkpointing": model.is_gradient_checkpointing,
    }


@pytest.mark.parametrize("bits", BITS)
def test_prepare_model_for_kbit_training_as_peft_and_a_qlora_step(base_dir, bits: str) -> None:
    theirs = peft.prepare_model_for_kbit_training(quantized(base_dir, bits, torch.bfloat16))
    ours = prepare_model_for_kbit_training(quantized(base_dir, bits, torch.bfloat16))
    assert _prepared_state(ours) == _prepared_state(theirs)
    assert ours.is_gradient_checkpointing and ours.model.norm.weight.dtype == torch.float32

    # one QLoRA training step: same initial adapter, same loss, same gradients
    options = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    torch.manual_seed(7)
    theirs = peft.get_peft_model(theirs, peft.LoraConfig(**options)).train()
    torch.manual_seed(7)
    ours = get_adapter_model(ours, adapters_core.LoraConfig(**options)).train()
    perturb_adapter_weights(theirs)
    perturb_adapter_weights(ours)
    inputs = batch("llama")
    losses, grads = [], []
    for model in (theirs, ours):
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert max_abs_diff(losses[0], losses[1]) < 1e-5
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 8
    for name, grad in grads[0].items():
        assert grad is not None and grads[1][name] is not None and grad.abs().sum() > 0, name
        assert max_abs_diff(grads[1][name], grad) < 1e-4, name


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_the_serving_form_refuses_a_quantized_base_by_name(base_dir, bits: str) -> None:
    """MultiAdapterModel's pools and kernels are float: a bitsandbytes base is refused at construction, with the
    layer named, rather than failing later inside the pools."""
    with pytest.raises(UnsupportedError, match=r"q_proj.*quantized.*float bases only"):
        adapters_core.MultiAdapterModel(quantized(base_dir, bits))
