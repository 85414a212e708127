"""A BLOOM base (ALiBi position biases, its own attention code: adapters_core/paged/families.py) served by the
engine runs on its paged core, and its concurrent greedy answers — LoRA, IA3, prompt tuning, prefix tuning and
the base, prefilled in chunks under a small token budget beside running decodes — are each PEFT's own answer for
that adapter alone. An MPT base (ALiBi through the attention mask, which the paged core does not build) is
refused at start-up, by name and with the reason: the server never serves it some other way."""

from __future__ import annotations

import warnings
from pathlib import Path

import peft
import pytest
import torch
from fastapi.testclient import TestClient
from serve_helpers import build_tokenizer, prompt
from test_engine_paged import all_at_once, body, paged_client, tokens
from tiny_models import VOCAB, perturb_adapter_weights
from transformers import AutoModelForCausalLM, BloomConfig, BloomForCausalLM, MptConfig, MptForCausalLM

from adapters_core.errors import UnsupportedError
from server.app import create_app
from server.engine import build_engine
from server.settings import Settings

NEW = 10
BLOCK = 4
CONFIGS = {
    "lora": peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value"], task_type="CAUSAL_LM"),
    "ia3": peft.IA3Config(
        target_modules=["query_key_value", "dense_4h_to_h"],
        feedforward_modules=["dense_4h_to_h"],
        task_type="CAUSAL_LM",
    ),
    "prompt": peft.PromptTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"),
    "prefix": peft.PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"),
}


@pytest.fixture(scope="module")
def bloom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """A tiny BLOOM with the served tokenizer, and a perturbed PEFT adapter per method."""
    base = tmp_path_factory.mktemp("bloom")
    torch.manual_seed(0)
    config = BloomConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        n_layer=2,
        n_head=4,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    model = BloomForCausalLM(config).eval()
    with torch.no_grad():  # a sharp head of its own: greedy tokens follow the context, and differ by adapter
        model.get_output_embeddings().weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
    model.save_pretrained(base)
    build_tokenizer().save_pretrained(base)
    adapters = {}
    for i, (name, cfg) in enumerate(CONFIGS.items()):
        pm = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(base), cfg)
        perturb_adapter_weights(pm, seed=30 + i, scale=0.5)
        pm.save_pretrained(base.parent / f"{base.name}-{name}")
        adapters[name] = base.parent / f"{base.name}-{name}"
    return base, adapters


@torch.no_grad()
def peft_greedy(base: Path, adapter: Path | None, text: str) -> list[int]:
    """PEFT's (or the bare base's) greedy tokens of `text` alone, through EOS."""
    warnings.simplefilter("ignore")
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    if adapter is not None:
        model = peft.PeftModel.from_pretrained(model, adapter).eval()
    ids = torch.tensor([build_tokenizer()(text)["input_ids"]])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=NEW,
        do_sample=False,
        pad_token_id=0,
    )
    new = out[0, ids.shape[1] :].tolist()
    return new[: new.index(2) + 1] if 2 in new else new


@pytest.mark.timeout(600)
def test_bloom_rows_take_the_paged_path_and_equal_peft_alone(bloom: tuple[Path, dict[str, Path]]) -> None:
    base, adapters = bloom
    names: list[str | None] = [None, *adapters, "lora", None]
    texts = [prompt(70 + i, length=4 + 3 * (i % 3)) for i in range(len(names))]
    with paged_client(
        "core",
        base_model=str(base),
        adapters=[f"{n}={p}" for n, p in adapters.items()],
        max_batch_size=8,
        max_batch_tokens=8,
        kv_block_size=BLOCK,
    ) as (client, engine, plans):
        assert engine.model.paged_support() is None
        out = all_at_once(client, engine, [body(t, n, new=NEW) for t, n in zip(texts, names)])
    for name, text, response in zip(names, texts, out):
        want = peft_greedy(base, adapters[name] if name else None, text)
        assert tokens(response) == want, name
    assert any(not c.want_logits for plan in plans for c in plan.chunks), "no prompt was chunked"
    mixed = [p for p in plans if any(len(c.tokens) > 1 for c in p.chunks)]
    assert any(any(len(c.tokens) == 1 for c in p.chunks) for p in mixed), "prefill never ran beside decodes"


def test_an_mpt_base_is_refused_at_start_up(tmp_path: Path) -> None:
    """The tiny MPT of tests/adapters_core/test_paged_cache.py: the app's start-up fails with an error that names
    the base and why, and the engine thread never starts (no request is ever served on another path)."""
    torch.manual_seed(0)
    config = MptConfig(d_model=32, n_heads=4, n_layers=2, vocab_size=VOCAB, expansion_ratio=2)
    MptForCausalLM(config).eval().save_pretrained(tmp_path)
    build_tokenizer().save_pretrained(tmp_path)
    settings = Settings(base_model=str(tmp_path))
    engine = build_engine(settings)
    app = create_app(settings, engine=engine)
    with (
        pytest.raises(UnsupportedError, match=r"cannot serve MptForCausalLM: .*ALiBi") as refused,
        TestClient(app),
    ):
        pass
    assert "docs/architectures.md" in str(refused.value)  # what to do instead
    assert not engine.running and engine._batch is None
