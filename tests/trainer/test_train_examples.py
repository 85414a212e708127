"""The examples/ configs run as written (one epoch, on the tiny bases examples/make_tiny_base.py writes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from swapyard.train_cli import parse_config
from trainer.run import train

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "examples").glob("*/config.yaml"))


@pytest.fixture(scope="module")
def example_bases(tmp_path_factory) -> dict[str, Path]:
    spec = importlib.util.spec_from_file_location("make_tiny_base", REPO / "examples" / "make_tiny_base.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_all(tmp_path_factory.mktemp("example-bases"))


def test_the_four_task_guides_are_there():
    assert [c.parent.name for c in CONFIGS] == [
        "lora-text-classification",
        "p-tuning-sentence-pair",
        "prefix-tuning-seq2seq-sentiment",
        "prompt-tuning-complaint-classification",
    ]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.parent.name for c in CONFIGS])
def test_example_config_trains(config, example_bases, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the configs use repository-relative paths
    cfg = parse_config(["--config", str(config)], environ={})
    kind = Path(cfg.base_model).name
    cfg = parse_config(
        [
            "--config",
            str(config),
            "--base-model",
            str(example_bases[kind]),
            "--epochs",
            "1",
            "--output-dir",
            str(tmp_path / "out"),
            "--no-progress",
        ],
        environ={},
    )
    result = train(cfg)
    config_json = json.loads((result.output_dir / "adapter_config.json").read_text())
    assert (
        config_json["task_type"]
        == {"seq-cls": "SEQ_CLS", "seq2seq-lm": "SEQ_2_SEQ_LM", "causal-lm": "CAUSAL_LM"}[cfg.task]
    )
    assert result.metrics["final"]["eval_loss"] > 0
