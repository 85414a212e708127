"""Two-way PEFT parity of prompt tuning, P-tuning, prefix tuning and LLaMA-Adapter on the tiny bases.

PEFT saves -> Swapyard loads, and Swapyard saves -> PEFT loads; logits on a padded batch agree to 1e-4
(float32). BERT prefix tuning cannot run in PEFT with transformers 5 (reference §10), so it is checked against
a hand-written BERT forward with the prefix prepended in every layer (transformers-4 semantics).
"""

from __future__ import annotations

import math

import peft
import pytest
import torch
from safetensors.torch import load_file
from tiny_models import BUILDERS, batch, max_abs_diff, perturb_adapter_weights

from adapters_core.config import AdapterConfig
from adapters_core.registry import get_method
from adapters_core.weights_io import save_adapter_weights

TASK = {"llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM", "bert": "SEQ_CLS", "t5": "SEQ_2_SEQ_LM"}
METHODS = {
    "prompt": lambda: peft.PromptTuningConfig(num_virtual_tokens=4),
    "p_mlp": lambda: peft.PromptEncoderConfig(num_virtual_tokens=4, encoder_hidden_size=32),
    "p_lstm": lambda: peft.PromptEncoderConfig(
        num_virtual_tokens=3, encoder_hidden_size=16, encoder_reparameterization_type="LSTM"
    ),
    "prefix": lambda: peft.PrefixTuningConfig(num_virtual_tokens=4),
    "prefix_proj": lambda: peft.PrefixTuningConfig(
        num_virtual_tokens=4, prefix_projection=True, encoder_hidden_size=24
    ),
    "llama_adapter": lambda: peft.AdaptionPromptConfig(adapter_len=4, adapter_layers=1),
    "llama_adapter2": lambda: peft.AdaptionPromptConfig(adapter_len=3, adapter_layers=2),
}
CASES = [
    (m, b)
    for m in ("prompt", "p_mlp", "p_lstm", "prefix", "prefix_proj")
    for b in ("llama", "gpt2", "bert", "t5")
]
CASES += [(m, b) for m in ("llama_adapter", "llama_adapter2") for b in ("llama", "gpt2")]
TOL = 1e-4


def peft_config(method: str, base: str):
    cfg = METHODS[method]()
    cfg.task_type = TASK[base]
    return cfg


@torch.no_grad()
def perturb_heads(model: torch.nn.Module, seed: int) -> None:
    """Give the trained copy of a classification head (modules_to_save) its own values."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "modules_to_save" in name:
            p.add_(0.5 * torch.randn(p.shape, generator=g))


def logits(out) -> torch.Tensor:
    return out.logits


@torch.no_grad()
def bert_prefix_oracle(model, table: torch.Tensor, inputs: dict, n: int) -> torch.Tensor:
    """BERT-for-classification logits with a key/value prefix in every self-attention layer, written out by hand:
    real tokens at positions n..n+L-1, the mask prefixed with n ones, [CLS] pooled (transformers-4 PEFT)."""
    bert, ids, mask = model.bert, inputs["input_ids"], inputs["attention_mask"]
    rows, length = ids.shape
    heads = model.config.num_attention_heads
    hd = model.config.hidden_size // heads
    layers = len(bert.encoder.layer)
    kv = table.view(n, 2 * layers, heads, hd).permute(1, 2, 0, 3)  # (2L, H, n, hd)
    full_mask = torch.cat([torch.ones(rows, n, dtype=mask.dtype), mask], dim=1)
    emb = bert.embeddings
    x = emb.word_embeddings(ids) + emb.position_embeddings(torch.arange(n, n + length))[None]
    x = emb.LayerNorm(x + emb.token_type_embeddings.weight[0])
    for i, layer in enumerate(bert.encoder.layer):
        sa = layer.attention.self

        def split(t):
            return t.view(rows, -1, heads, hd).transpose(1, 2)

        k = torch.cat([kv[2 * i].expand(rows, -1, -1, -1), split(sa.key(x))], dim=2)
        v = torch.cat([kv[2 * i + 1].expand(rows, -1, -1, -1), split(sa.value(x))], dim=2)
        s = split(sa.query(x)) @ k.transpose(-1, -2) / math.sqrt(hd)
        s = s.masked_fill(full_mask[:, None, None, :] == 0, torch.finfo(s.dtype).min)
        a = (s.softmax(-1) @ v).transpose(1, 2).reshape(rows, length, -1)
        x = layer.attention.output.LayerNorm(layer.attention.output.dense(a) + x)
        x = layer.output.LayerNorm(layer.output.dense(layer.intermediate(x)) + x)
    return model.classifier(bert.pooler(x))


def build_ours(base: str, config: AdapterConfig):
    return get_method(config.peft_type).tuner_cls(BUILDERS[base](), config, "default").eval()


def load_ours(base: str, directory) -> torch.nn.Module:
    config = AdapterConfig.from_pretrained(str(directory))
    config.inference_mode = True
    tuner = build_ours(base, config)
    tuner.load_state_dict_from_file("default", load_file(str(directory / "adapter_model.safetensors")))
    return tuner


def save_ours(tuner, directory) -> None:
    tuner.peft_config["default"].save_pretrained(directory)
    save_adapter_weights(tuner.state_dict_to_save("default"), directory)


@pytest.mark.parametrize(("method", "base"), CASES)
def test_peft_saves_we_load(method: str, base: str, tmp_path) -> None:
    pm = peft.get_peft_model(BUILDERS[base](), peft_config(method, base))
    perturb_adapter_weights(pm, seed=11)
    perturb_heads(pm, seed=12)
    pm.eval()
    pm.save_pretrained(tmp_path)
    ours = load_ours(base, tmp_path)
    inputs = batch(base)
    with torch.no_grad():
        got = logits(ours(**inputs))
        if base == "bert" and method.startswith("prefix"):
            table = load_file(str(tmp_path / "adapter_model.safetensors"))["prompt_embeddings"]
            pm_model = pm.base_model  # the head copy PEFT trained, via its modules_to_save wrapper
            want = bert_prefix_oracle(pm_model, table, inputs, 4)
        else:
            want = logits(pm(**inputs))
    assert max_abs_diff(got, want) <= TOL


@pytest.mark.parametrize(("method", "base"), CASES)
def test_we_save_peft_loads(method: str, base: str, tmp_path) -> None:
    pcfg = peft_config(method, base)
    ours_cfg = AdapterConfig.from_dict({k: getattr(v, "value", v) for k, v in pcfg.to_dict().items()})
    torch.manual_seed(3)
    ours = build_ours(base, ours_cfg)  # training form: P-tuning MLP/LSTM and prefix projection included
    perturb_adapter_weights(ours, seed=21)
    perturb_heads(ours, seed=22)
    save_ours(ours, tmp_path)
    pm = peft.PeftModel.from_pretrained(BUILDERS[base](), str(tmp_path)).eval()
    inputs = batch(base)
    with torch.no_grad():
        got = logits(ours(**inputs))
        if base == "bert" and method.startswith("prefix"):
            # PEFT loads the file (same table, same head) but cannot run it; the oracle runs PEFT's tensors.
            table = pm.prompt_encoder["default"].embedding.weight
            assert max_abs_diff(table, ours.prompt_table("default")) == 0.0
            want = bert_prefix_oracle(pm.base_model, table, inputs, 4)
        else:
            want = logits(pm(**inputs))
    assert max_abs_diff(got, want) <= TOL


@pytest.mark.parametrize("method", ["p_mlp", "p_lstm", "prefix_proj"])
def test_training_form_matches_peft_encoder(method: str) -> None:
    """The trainable encoders are PEFT's: PEFT's encoder weights give the same table and logits here."""
    pm = peft.get_peft_model(BUILDERS["llama"](), peft_config(method, "llama"))
    perturb_adapter_weights(pm, seed=5)
    pm.eval()
    config = AdapterConfig.from_dict(
        {k: getattr(v, "value", v) for k, v in pm.peft_config["default"].to_dict().items()}
    )
    ours = build_ours("llama", config)
    ours.prompt_encoder["default"].load_state_dict(pm.prompt_encoder["default"].state_dict())
    saved = peft.get_peft_model_state_dict(pm)["prompt_embeddings"]
    assert max_abs_diff(ours.state_dict_to_save("default")["prompt_embeddings"], saved) == 0.0
    inputs = batch("llama")
    with torch.no_grad():
        assert max_abs_diff(ours(**inputs).logits, pm(**inputs).logits) <= TOL


def test_saved_keys_and_shapes_match_peft(tmp_path) -> None:
    """Same keys, shapes and derived config fields as PEFT's files (GQA prefix: token_dim 32, 2 heads)."""
    for method, base in [
        ("prefix", "llama"),
        ("prompt", "bert"),
        ("prompt", "t5"),
        ("llama_adapter2", "llama"),
    ]:
        pm = peft.get_peft_model(BUILDERS[base](), peft_config(method, base))
        pm.save_pretrained(tmp_path / "peft")
        theirs = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
        ours = load_ours(base, tmp_path / "peft")
        mine = ours.state_dict_to_save("default")
        assert {k: tuple(v.shape) for k, v in mine.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
        cfg = ours.peft_config["default"]
        for field in ("num_layers", "token_dim", "num_attention_heads", "num_transformer_submodules"):
            assert getattr(cfg, field, None) == getattr(pm.peft_config["default"], field, None), field
    assert load_ours("llama", tmp_path / "peft").peft_config["default"].target_modules == "self_attn"
