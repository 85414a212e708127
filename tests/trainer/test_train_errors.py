"""Every input error is raised before the base weights load, with a message that says what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import write_jsonl

import trainer.run
from adapters_core.methods.lora import LoraTuner
from trainer.config import TrainConfig
from trainer.errors import (
    EmptyDataError,
    IncompatibleMethodError,
    MissingColumnError,
    OutputDirExistsError,
    TrainConfigError,
    UnseenLabelError,
)
from trainer.run import train


@pytest.fixture(autouse=True)
def _weights_must_not_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the base model's weights were loaded before the error was detected")

    monkeypatch.setattr(trainer.run, "load_base_model", refuse)


def _cfg(
    bases,
    tmp_path: Path,
    *,
    kind="llama",
    method="lora",
    task="causal-lm",
    train_rows=None,
    eval_rows=None,
    **kw,
):
    rows = train_rows if train_rows is not None else [{"prompt": "ask k1", "completion": "v1"}]
    options = {
        "base_model": str(bases[kind]),
        "method": method,
        "task": task,
        "output_dir": str(tmp_path / "out"),
        "train_file": str(write_jsonl(tmp_path / "train.jsonl", rows)),
        "progress": False,
    }
    if eval_rows is not None:
        options["eval_file"] = str(write_jsonl(tmp_path / "eval.jsonl", eval_rows))
    options.update(kw)
    return TrainConfig(**options)


def test_missing_column(bases, tmp_path):
    cfg = _cfg(bases, tmp_path, train_rows=[{"question": "ask k1", "completion": "v1"}])
    with pytest.raises(
        MissingColumnError,
        match=r"train.jsonl: column 'prompt' .* columns found: \['question', 'completion'\]\. Set --prompt-column",
    ):
        train(cfg)


def test_missing_column_in_eval_file(bases, tmp_path):
    cfg = _cfg(bases, tmp_path, eval_rows=[{"prompt": "ask k1", "answer": "v1"}])
    with pytest.raises(MissingColumnError, match=r"eval.jsonl: column 'completion'"):
        train(cfg)


def test_empty_training_data(bases, tmp_path):
    with pytest.raises(EmptyDataError, match=r"train\.jsonl has no rows"):
        train(_cfg(bases, tmp_path, train_rows=[]))


def test_eval_label_never_seen(bases, tmp_path):
    cfg = _cfg(
        bases,
        tmp_path,
        kind="bert",
        task="seq-cls",
        train_rows=[{"text": "great", "label": "pos"}, {"text": "sad", "label": "neg"}],
        eval_rows=[{"text": "fine", "label": "neutral"}],
    )
    with pytest.raises(
        UnseenLabelError, match=r"eval.jsonl row 1: label 'neutral' never appears in .*train.jsonl"
    ):
        train(cfg)


def test_eval_tag_never_seen(bases, tmp_path):
    cfg = _cfg(
        bases,
        tmp_path,
        kind="bert",
        task="token-cls",
        train_rows=[{"tokens": ["k1", "w1"], "tags": ["KEY", "O"]}],
        eval_rows=[{"tokens": ["v1"], "tags": ["VAL"]}],
    )
    with pytest.raises(UnseenLabelError, match="tag 'VAL' never appears"):
        train(cfg)


CLS_ROWS = [{"text": "great w1", "label": "pos"}]


@pytest.mark.parametrize(
    ("kind", "method", "task", "rows", "needle"),
    [
        (
            "bert",
            "llama-adapter",
            "seq-cls",
            CLS_ROWS,
            "LLaMA-Adapter wraps the attention of llama, mistral, gpt2",
        ),
        ("llama", "llama-adapter", "seq-cls", CLS_ROWS, "llama-adapter trains causal language models only"),
        ("bert", "prefix-tuning", "seq-cls", CLS_ROWS, "this encoder-only model has none"),
        ("llama", "prefix-tuning", "seq-cls", CLS_ROWS, r"PEFT \(0.21 with transformers 5\) cannot load"),
        ("bert", "lora", "causal-lm", None, "encoder-only model; --task causal-lm needs a decoder"),
        ("gpt2", "lora", "seq2seq-lm", [{"source": "a", "target": "b"}], "has no seq2seq-lm head"),
    ],
)
def test_method_or_task_does_not_fit_the_model(bases, tmp_path, kind, method, task, rows, needle):
    with pytest.raises(IncompatibleMethodError, match=needle):
        train(_cfg(bases, tmp_path, kind=kind, method=method, task=task, train_rows=rows))


def test_lora_without_default_targets_needs_target_modules(bases, tmp_path, monkeypatch):
    monkeypatch.delitem(LoraTuner.default_targets, "llama")  # type: ignore[attr-defined]
    with pytest.raises(IncompatibleMethodError, match=r"no default target modules .*target_modules"):
        train(_cfg(bases, tmp_path))


def test_unknown_method_option(bases, tmp_path):
    with pytest.raises(
        TrainConfigError, match=r"unknown option\(s\) \['rank'\]; LoraConfig accepts: .*lora_alpha"
    ):
        train(_cfg(bases, tmp_path, method_config={"rank": 8}))


def test_invalid_method_option_value(bases, tmp_path):
    with pytest.raises(
        TrainConfigError, match="method_config for --method lora: r must be a positive integer"
    ):
        train(_cfg(bases, tmp_path, method_config={"r": 0}))


def test_output_dir_would_be_overwritten(bases, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "adapter_model.safetensors").write_bytes(b"precious")
    with pytest.raises(
        OutputDirExistsError, match=r"not empty; training would overwrite it\. Pass --overwrite"
    ):
        train(_cfg(bases, tmp_path))


def test_resume_without_checkpoint(bases, tmp_path):
    from trainer.errors import CheckpointError

    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        train(_cfg(bases, tmp_path, resume_from_checkpoint="latest"))


def test_unreadable_base_model(tmp_path):
    cfg = TrainConfig(
        base_model=str(tmp_path / "nope"),
        method="lora",
        task="causal-lm",
        output_dir=str(tmp_path / "o"),
        train_file=str(write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "completion": "b"}])),
    )
    with pytest.raises(TrainConfigError, match="cannot read the base model"):
        train(cfg)
