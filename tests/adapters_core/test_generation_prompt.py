"""Generation with prompt tuning, P-tuning, prefix tuning and LLaMA-Adapter is consistent with the forward.

Causal bases: greedy `generate` equals greedy decoding by repeated full forward passes (the semantics PEFT
intends, not the transformers-5 behaviour of PEFT's own generate, reference §14). T5: equals PEFT's generate.
"""

from __future__ import annotations

import peft
import pytest
import torch
from safetensors.torch import load_file
from tiny_models import BUILDERS, batch, perturb_adapter_weights
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
)

from adapters_core.config import AdapterConfig
from adapters_core.registry import get_method

NEW = 16
TASK = {"llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM", "t5": "SEQ_2_SEQ_LM"}
METHODS = {
    "prompt": lambda: peft.PromptTuningConfig(num_virtual_tokens=4),
    "p_mlp": lambda: peft.PromptEncoderConfig(num_virtual_tokens=4, encoder_hidden_size=32),
    "prefix": lambda: peft.PrefixTuningConfig(num_virtual_tokens=4),
    "prefix_proj": lambda: peft.PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True),
    "llama_adapter": lambda: peft.AdaptionPromptConfig(adapter_len=4, adapter_layers=2),
}


def adapter_pair(method: str, base: str, tmp_path, seed: int = 7):
    """(PEFT model, Swapyard tuner loaded from PEFT's saved files), both in eval mode."""
    cfg = METHODS[method]()
    cfg.task_type = TASK[base]
    pm = peft.get_peft_model(BUILDERS[base](), cfg)
    perturb_adapter_weights(pm, seed=seed, scale=1.0)
    pm.eval()
    pm.save_pretrained(tmp_path)
    config = AdapterConfig.from_pretrained(str(tmp_path))
    config.inference_mode = True
    ours = get_method(config.peft_type).tuner_cls(BUILDERS[base](), config, "default").eval()
    ours.load_state_dict_from_file("default", load_file(str(tmp_path / "adapter_model.safetensors")))
    return pm, ours


@torch.no_grad()
def decode_by_full_forwards(model, input_ids, attention_mask, choose, eos=2, pad=0) -> torch.Tensor:
    """The oracle: run the whole sequence through `model.forward` for every new token."""
    seq, mask = input_ids, attention_mask
    unfinished = torch.ones(seq.shape[0], dtype=torch.bool)
    for _ in range(NEW):
        last = model(input_ids=seq, attention_mask=mask).logits[:, -1].float()  # (B, V)
        tok = torch.where(unfinished, choose(seq, last), torch.full_like(unfinished, pad, dtype=torch.long))
        seq = torch.cat([seq, tok[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(tok)[:, None]], dim=1)
        unfinished &= tok != eos
        if not unfinished.any():
            break
    return seq


def greedy(ids, logits):
    return logits.argmax(-1)


CAUSAL = [(m, b) for m in METHODS for b in ("llama", "gpt2")]


@pytest.mark.parametrize(("method", "base"), CAUSAL)
def test_greedy_generate_equals_repeated_forward(method: str, base: str, tmp_path) -> None:
    _, ours = adapter_pair(method, base, tmp_path)
    inputs = batch(base)  # left-padded rows included
    got = ours.generate(**inputs, max_new_tokens=NEW)
    want = decode_by_full_forwards(ours, inputs["input_ids"], inputs["attention_mask"], greedy)
    assert torch.equal(got, want)
    assert torch.equal(
        got[:, : inputs["input_ids"].shape[1]], inputs["input_ids"]
    )  # no virtual tokens returned
    with torch.no_grad():  # the adapter is really applied (the tiny GPT-2 often repeats one token anyway)
        adapted = ours(**inputs).logits[:, -1]
        plain = BUILDERS[base]()(**inputs).logits[:, -1]
    assert (adapted - plain).abs().max() > 1e-3


@pytest.mark.parametrize("base", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_sampled_generate_equals_repeated_forward_sampling(method: str, base: str, tmp_path) -> None:
    _, ours = adapter_pair(method, base, tmp_path)
    inputs = batch(base)
    processors = LogitsProcessorList([TemperatureLogitsWarper(0.8), TopKLogitsWarper(20)])
    oracle_gen = torch.Generator().manual_seed(1234)

    def sample(ids, logits):  # transformers' warpers; the draw in float64, as adapters_core/sampling.py draws
        probs = processors(ids, logits.double()).softmax(-1)
        return torch.multinomial(probs, 1, generator=oracle_gen).squeeze(1)

    got = ours.generate(
        **inputs,
        max_new_tokens=NEW,
        do_sample=True,
        temperature=0.8,
        top_k=20,
        generator=torch.Generator().manual_seed(1234),
    )
    want = decode_by_full_forwards(ours, inputs["input_ids"], inputs["attention_mask"], sample)
    assert torch.equal(got, want)
    top1 = ours.generate(**inputs, max_new_tokens=NEW, do_sample=True, top_k=1)
    assert torch.equal(top1, ours.generate(**inputs, max_new_tokens=NEW))


@torch.no_grad()
def t5_decode_by_full_forwards(model, inputs, eos=1, pad=0) -> torch.Tensor:
    """Greedy seq2seq decoding by running the whole decoder sequence through `model.forward` each step."""
    seq = torch.zeros(inputs["input_ids"].shape[0], 1, dtype=torch.long)  # decoder_start_token_id = 0
    unfinished = torch.ones(seq.shape[0], dtype=torch.bool)
    for _ in range(NEW):
        tok = model(**inputs, decoder_input_ids=seq).logits[:, -1].argmax(-1)
        tok = torch.where(unfinished, tok, torch.full_like(tok, pad))
        seq = torch.cat([seq, tok[:, None]], dim=1)
        unfinished &= tok != eos
        if not unfinished.any():
            break
    return seq


@pytest.mark.parametrize("method", ["prompt", "p_mlp"])
def test_t5_prompt_generate_equals_peft(method: str, tmp_path) -> None:
    pm, ours = adapter_pair(method, "t5", tmp_path)
    inputs = {k: v for k, v in batch("t5").items() if k != "decoder_input_ids"}
    want = pm.generate(**inputs, max_new_tokens=NEW, do_sample=False)
    got = ours.generate(**inputs, max_new_tokens=NEW)
    assert torch.equal(got, want)
    assert torch.equal(got, t5_decode_by_full_forwards(ours, inputs))


@pytest.mark.parametrize("method", ["prefix", "prefix_proj"])
def test_t5_prefix_generate_follows_the_forward_not_peft(method: str, tmp_path) -> None:
    """PEFT 0.21.2's T5 prefix `generate` with transformers 5.24 drops the prefix: its prefill cache goes in as
    `past_key_values` next to the `cache` transformers passes, and is ignored, so it generates exactly like the
    base model. Swapyard decodes with the prefix, as PEFT's own forward implies."""
    pm, ours = adapter_pair(method, "t5", tmp_path)
    inputs = {k: v for k, v in batch("t5").items() if k != "decoder_input_ids"}
    got = ours.generate(**inputs, max_new_tokens=NEW)
    assert torch.equal(got, t5_decode_by_full_forwards(pm, inputs))  # PEFT's forward is the reference
    assert torch.equal(got, t5_decode_by_full_forwards(ours, inputs))
    peft_ids = pm.generate(**inputs, max_new_tokens=NEW, do_sample=False)
    base_ids = BUILDERS["t5"]().generate(**inputs, max_new_tokens=NEW, do_sample=False)
    assert torch.equal(peft_ids, base_ids), (
        "PEFT's T5 prefix generate no longer drops the prefix: re-check §14"
    )
    assert not torch.equal(got, peft_ids)


def test_disabled_adapter_generates_like_the_base(tmp_path) -> None:
    _, ours = adapter_pair("prefix", "llama", tmp_path)
    inputs = batch("llama")
    ours.enable_adapters(False)
    got = ours.generate(**inputs, max_new_tokens=NEW)
    ours.enable_adapters(True)
    want = decode_by_full_forwards(BUILDERS["llama"](), inputs["input_ids"], inputs["attention_mask"], greedy)
    assert torch.equal(got, want)
