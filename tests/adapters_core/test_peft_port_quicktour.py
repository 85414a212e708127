"""A PEFT script ports by changing its import: PEFT's quicktour and task guides, run with `peft` and with
`adapters_core` (the same text, peft_guide_scripts.py), give the same printed line, the same saved files and
the same outputs, compared as whole tensors.

Where PEFT 0.21.2's own `generate` is wrong under transformers 5 (prompt tuning on a causal LM, prefix tuning on
T5: reference §14), our `generate` is compared with greedy decoding by repeated forwards of PEFT's model (PEFT's
forward is right there); everywhere else with PEFT's `generate`.
"""

from __future__ import annotations

import peft
import pytest
import torch
from peft_guide_scripts import SCRIPTS, Env
from tiny_models import VOCAB, batch, max_abs_diff, tiny_bert, tiny_llama, tiny_t5
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertForTokenClassification,
    PreTrainedTokenizerFast,
)

import adapters_core

pytestmark = pytest.mark.filterwarnings("ignore")
TOL = 1e-5
# Version strings differ by design: PEFT writes its release, we write the PEFT format we follow (the same).
GENERATE_ORACLE = {"prompt_tuning_causal_lm", "prefix_tuning_seq2seq"}


def _tokenizer(path: str) -> str:
    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2, **{f"t{i}": i + 3 for i in range(100)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(path)
    return path


def _token_cls_bert() -> BertForTokenClassification:
    torch.manual_seed(0)
    return BertForTokenClassification(tiny_bert().config).eval()


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bases")
    builders = {
        "llama": tiny_llama,
        "t5": tiny_t5,
        "bert_seq_cls": tiny_bert,
        "bert_token_cls": _token_cls_bert,
    }
    paths = {}
    for name, build in builders.items():
        paths[name] = str(root / name)
        build().save_pretrained(paths[name])
    paths["tokenizer"] = _tokenizer(str(root / "tokenizer"))
    return paths


def _batches() -> dict[str, dict[str, torch.Tensor]]:
    llama = batch("llama")
    labels = llama["input_ids"].masked_fill(llama["attention_mask"] == 0, -100)
    t5 = batch("t5")
    t5_labels = torch.randint(3, VOCAB, (3, 5), generator=torch.Generator().manual_seed(1))
    bert = batch("bert")
    token_labels = torch.randint(0, 2, bert["input_ids"].shape, generator=torch.Generator().manual_seed(2))
    return {
        "llama": {**llama, "labels": labels},
        "t5": {"input_ids": t5["input_ids"], "attention_mask": t5["attention_mask"], "labels": t5_labels},
        "bert_seq_cls": {**bert, "labels": torch.tensor([0, 2, 1])},
        "bert_token_cls": {**bert, "labels": token_labels.masked_fill(bert["attention_mask"] == 0, -100)},
    }


def _as_sets(config: dict) -> dict:
    """PEFT writes set-valued fields (target_modules, ...) in set iteration order: compare them as sets."""
    return {
        k: frozenset(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v
        for k, v in config.items()
    }


def run_script(name: str, lib, bases: dict[str, str], out: str, capsys) -> dict:
    env = Env(bases=bases, tokenizer=bases["tokenizer"], out=out, batches=_batches())
    capsys.readouterr()
    torch.manual_seed(0)  # the guides' set_seed: fresh adapters are initialised from the same generator state
    result = SCRIPTS[name](lib, env)
    result["printed"] = capsys.readouterr().out
    return result


@torch.no_grad()
def greedy_by_forwards(
    model, inputs: dict[str, torch.Tensor], new: int, eos: int, seq2seq: bool
) -> torch.Tensor:
    """Greedy decoding by full forwards (the oracle where PEFT's generate is known wrong); pad = 0."""
    if seq2seq:
        seq = torch.zeros(inputs["input_ids"].shape[0], 1, dtype=torch.long)
        mask = None
    else:
        seq, mask = inputs["input_ids"], inputs["attention_mask"]
    unfinished = torch.ones(seq.shape[0], dtype=torch.bool)
    for _ in range(new):
        if seq2seq:
            logits = model(**inputs, decoder_input_ids=seq).logits[:, -1]
        else:
            logits = model(input_ids=seq, attention_mask=mask).logits[:, -1]
        tok = torch.where(unfinished, logits.argmax(-1), torch.zeros_like(unfinished, dtype=torch.long))
        seq = torch.cat([seq, tok[:, None]], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(tok)[:, None]], dim=1)
        unfinished &= tok != eos
        if not unfinished.any():
            break
    return seq


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_guide_ported_by_import_gives_peft_outputs(name: str, bases, tmp_path, capsys) -> None:
    theirs = run_script(name, peft, bases, str(tmp_path / "peft"), capsys)
    ours = run_script(name, adapters_core, bases, str(tmp_path / "ours"), capsys)

    assert ours["printed"] == theirs["printed"] and theirs["printed"].startswith("trainable params: ")
    assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-5)
    assert ours["files"] == theirs["files"]  # README.md, adapter_config.json, adapter_model.safetensors
    assert _as_sets(ours["config"]) == _as_sets(theirs["config"])
    assert ours["weights"].keys() == theirs["weights"].keys()
    for key, tensor in theirs["weights"].items():
        assert max_abs_diff(ours["weights"][key], tensor) <= TOL, key
    for key in ("logits", "auto_logits", "merged_logits"):
        if key in theirs:
            assert max_abs_diff(ours[key], theirs[key]) <= TOL, key
    for key in ("state_keys", "num_labels", "config_attr", "is_peft_model"):
        if key in theirs:
            assert ours[key] == theirs[key], key

    if "generated" in theirs:
        if name in GENERATE_ORACLE:
            seq2seq = "seq2seq" in name
            full = _batches()["t5" if seq2seq else "llama"]
            inputs = {k: full[k] for k in ("input_ids", "attention_mask")}
            want = greedy_by_forwards(theirs["model"], inputs, 10, 1 if seq2seq else 3, seq2seq)
        else:
            want = theirs["generated"]
        assert torch.equal(ours["generated"], want)


# The base each script loads (its key in bases() and _batches()) and the Auto class it loads it with.
BASE_OF = {
    "quicktour_seq2seq_lora": ("t5", AutoModelForSeq2SeqLM),
    "causal_lm_lora": ("llama", AutoModelForCausalLM),
    "prompt_tuning_causal_lm": ("llama", AutoModelForCausalLM),
    "p_tuning_seq_cls": ("bert_seq_cls", AutoModelForSequenceClassification),
    "prefix_tuning_seq2seq": ("t5", AutoModelForSeq2SeqLM),
    "ia3_seq2seq": ("t5", AutoModelForSeq2SeqLM),
    "token_cls_lora": ("bert_token_cls", AutoModelForTokenClassification),
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_the_trained_adapter_changes_the_output(name: str, bases, tmp_path, capsys) -> None:
    """The comparisons above are not vacuous: for every script, the one training step moves the outputs away
    from the base's."""
    assert BASE_OF.keys() == SCRIPTS.keys()
    ours = run_script(name, adapters_core, bases, str(tmp_path), capsys)
    kind, auto = BASE_OF[name]
    with torch.no_grad():
        plain = auto.from_pretrained(bases[kind]).eval()(**_batches()[kind]).logits
    got = ours["logits"]
    if got.dim() == 3:  # a causal prompt method's logits lead with its virtual tokens
        got = got[:, -plain.shape[1] :]
    assert got.shape == plain.shape, (got.shape, plain.shape)
    assert max_abs_diff(got, plain) > 1e-3
