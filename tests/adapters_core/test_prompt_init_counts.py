"""Prompt tuning's TEXT init, parameter counts as PEFT prints them, configs and adapter management."""

from __future__ import annotations

import dataclasses

import peft
import pytest
import torch
from tiny_models import BUILDERS, batch, max_abs_diff
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import adapters_core
from adapters_core.config import AdapterConfig
from adapters_core.methods.prefix_tuning import PrefixTuningConfig, PrefixTuningModel
from adapters_core.methods.prompt_tuning import PromptTuningConfig, PromptTuningModel
from adapters_core.registry import get_method


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    """A WordLevel tokenizer over words t0..t99 (ids 3..102), saved like a Hub tokenizer."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2, **{f"t{i}": i + 3 for i in range(100)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(path)
    return str(path)


@pytest.mark.parametrize(
    ("text", "n", "ids"), [("t10 t20 t30", 7, [13, 23, 33, 13, 23, 33, 13]), ("t1 t2 t3 t4 t5", 3, [4, 5, 6])]
)
def test_text_init_rows_are_word_embeddings_like_peft(
    tokenizer_dir: str, text: str, n: int, ids: list[int]
) -> None:
    kw = dict(
        task_type="CAUSAL_LM",
        num_virtual_tokens=n,
        prompt_tuning_init="TEXT",
        prompt_tuning_init_text=text,
        tokenizer_name_or_path=tokenizer_dir,
    )
    ours = PromptTuningModel(BUILDERS["llama"](), PromptTuningConfig(**kw))  # type: ignore[arg-type]
    pm = peft.get_peft_model(BUILDERS["llama"](), peft.PromptTuningConfig(**kw))
    table = ours.prompt_table("default")
    words = BUILDERS["llama"]().model.embed_tokens.weight[ids]  # repeated / truncated to n rows
    assert max_abs_diff(table, words) == 0.0
    assert max_abs_diff(table, pm.prompt_encoder["default"].embedding.weight) == 0.0
    assert table.requires_grad


def count(module: torch.nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def test_counts_match_the_reference_numbers() -> None:
    """reference §13.2: tiny Llama, n=4."""
    prompt = PromptTuningModel(
        BUILDERS["llama"](), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    assert count(prompt) == (256, 107_072)
    prefix = PrefixTuningModel(
        BUILDERS["llama"](), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    assert count(prefix) == (512, 107_328)


COUNT_CASES = [
    (
        "llama",
        lambda: peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=32),
    ),
    (
        "gpt2",
        lambda: peft.PromptEncoderConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=4,
            encoder_reparameterization_type="LSTM",
            encoder_num_layers=2,
        ),
    ),
    (
        "llama",
        lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, prefix_projection=True),
    ),
    (
        "t5",
        lambda: peft.PrefixTuningConfig(
            task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, prefix_projection=True
        ),
    ),
    ("t5", lambda: peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4)),
    ("bert", lambda: peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)),
    ("bert", lambda: peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)),
    ("llama", lambda: peft.AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=4, adapter_layers=2)),
    ("gpt2", lambda: peft.AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=3, adapter_layers=1)),
]


@pytest.mark.parametrize(("base", "make"), COUNT_CASES)
def test_trainable_counts_equal_peft(base: str, make) -> None:
    """Training form (encoders, projections, head copies) counts exactly as PEFT's get_nb_trainable_parameters."""
    pcfg = make()
    config = AdapterConfig.from_dict({k: getattr(v, "value", v) for k, v in pcfg.to_dict().items()})
    ours = get_method(config.peft_type).tuner_cls(BUILDERS[base](), config, "default")
    assert count(ours) == peft.get_peft_model(BUILDERS[base](), pcfg).get_nb_trainable_parameters()
    # Inference form (what loading builds): PEFT still counts the bare table (and LLaMA-Adapter tensors) as
    # trainable, but not the head copies.
    inference = dataclasses.replace(config, inference_mode=True)
    loaded = get_method(config.peft_type).tuner_cls(BUILDERS[base](), inference, "default")
    pcfg_inf = make()
    pcfg_inf.inference_mode = True
    assert count(loaded) == peft.get_peft_model(BUILDERS[base](), pcfg_inf).get_nb_trainable_parameters()


def test_config_fields_and_defaults_are_peft_s() -> None:
    pairs = [
        (adapters_core.PromptTuningConfig, peft.PromptTuningConfig),
        (adapters_core.PromptEncoderConfig, peft.PromptEncoderConfig),
        (adapters_core.PrefixTuningConfig, peft.PrefixTuningConfig),
        (adapters_core.AdaptionPromptConfig, peft.AdaptionPromptConfig),
    ]
    for ours, theirs in pairs:
        mine = {f.name: f.default for f in dataclasses.fields(ours)}
        for f in dataclasses.fields(theirs):
            assert f.name in mine, f"{ours.__name__} lacks {f.name}"
            default = f.default if f.default is not dataclasses.MISSING else None
            assert getattr(mine[f.name], "value", mine[f.name]) == getattr(default, "value", default), f.name


def test_adapter_management_and_disable() -> None:
    tuner = PromptTuningModel(
        BUILDERS["llama"](), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    tuner.add_adapter("other", PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    inputs = batch("llama")
    with torch.no_grad():
        assert tuner(**inputs).logits.shape[1] == 12
        tuner.set_adapter("other")
        assert tuner(**inputs).logits.shape[1] == 10
        tuner.enable_adapters(False)
        plain = tuner(**inputs).logits
        tuner.enable_adapters(True)
        assert max_abs_diff(plain, BUILDERS["llama"]()(**inputs).logits) == 0.0
        tuner.delete_adapter("other")
        assert tuner.active_adapter == "default" and tuner(**inputs).logits.shape[1] == 12


def test_position_ids_are_dropped_for_prompts_and_shifted_for_prefixes() -> None:
    inputs = batch("llama")
    positions = torch.arange(8).expand(3, -1)
    prompt = PromptTuningModel(
        BUILDERS["llama"](), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    prefix = PrefixTuningModel(
        BUILDERS["llama"](), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    with torch.no_grad(), pytest.warns(UserWarning, match="position_ids are not used"):
        assert (
            max_abs_diff(prompt(**inputs, position_ids=positions + 5).logits, prompt(**inputs).logits) == 0.0
        )
    with torch.no_grad():
        assert max_abs_diff(prefix(**inputs, position_ids=positions).logits, prefix(**inputs).logits) <= 1e-6
