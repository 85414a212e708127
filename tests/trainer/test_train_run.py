"""`train()` and `swapyard train` end to end: determinism, resume, best-epoch keeping, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from train_helpers import write_jsonl

from swapyard.train_cli import main
from trainer.config import TrainConfig
from trainer.run import train


def _cfg(bases, task_data, out: Path, method="lora", task="causal-lm", kind="llama", **kw) -> TrainConfig:
    train_file, eval_file = task_data[task]
    options = {
        "base_model": str(bases[kind]),
        "method": method,
        "task": task,
        "train_file": str(train_file),
        "eval_file": str(eval_file),
        "output_dir": str(out),
        "num_epochs": 2,
        "batch_size": 8,
        "learning_rate": 2e-2,
        "progress": False,
        "seed": 3,
    }
    options.update(kw)
    return TrainConfig(**options)


def _weights(out: Path) -> dict:
    return load_file(str(out / "adapter_model.safetensors"))


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].equal(b[k]), k


@pytest.mark.parametrize(("method", "options"), [("lora", {"lora_dropout": 0.2}), ("p-tuning", {})])
def test_same_seed_gives_the_same_adapter(bases, task_data, tmp_path, method, options):
    a = train(_cfg(bases, task_data, tmp_path / "a", method=method, method_config=options)).output_dir
    b = train(_cfg(bases, task_data, tmp_path / "b", method=method, method_config=options)).output_dir
    _assert_same(_weights(a), _weights(b))
    c = train(_cfg(bases, task_data, tmp_path / "c", method=method, method_config=options, seed=4)).output_dir
    assert any(not _weights(a)[k].equal(_weights(c)[k]) for k in _weights(a))


@pytest.mark.parametrize(
    ("method", "options"),
    # LoRA with dropout (RNG state), P-tuning (its MLP is not in the PEFT file, only in the checkpoint),
    # AdaLoRA (orthogonality loss, budget state).
    [("lora", {"lora_dropout": 0.2}), ("p-tuning", {}), ("adalora", {"init_r": 4, "target_r": 2})],
)
def test_resume_after_interrupt_equals_uninterrupted(bases, task_data, tmp_path, method, options):
    kw = {"method": method, "method_config": options, "num_epochs": 3, "save_steps": 5, "keep_best": False}
    full = train(_cfg(bases, task_data, tmp_path / "full", **kw))

    def crash(state):
        if state.global_step == 7:  # epoch 1 of 3 (8 steps each), after the step-5 checkpoint
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(bases, task_data, tmp_path / "cut", **kw), on_step_end=crash)
    assert not (tmp_path / "cut" / "adapter_model.safetensors").exists()
    resumed = train(_cfg(bases, task_data, tmp_path / "cut", resume_from_checkpoint="latest", **kw))
    _assert_same(_weights(full.output_dir), _weights(resumed.output_dir))
    assert resumed.metrics["epochs"] == full.metrics["epochs"]


def test_keep_best_saves_the_best_epoch(bases, task_data, tmp_path):
    # The eval set maps every key to the *next* value: once training learns its own mapping (after first
    # learning the answer format), eval loss rises again, so the best epoch is not the last.
    rows = [{"prompt": f"ask k{i % 8}", "completion": f"v{(i + 1) % 8}"} for i in range(16)]
    shifted = write_jsonl(tmp_path / "shifted.jsonl", rows)
    res = train(_cfg(bases, task_data, tmp_path / "o", num_epochs=6, eval_file=str(shifted)))
    losses = [e["eval_loss"] for e in res.metrics["epochs"]]
    best = res.metrics["best"]
    assert best["eval_loss"] == min(losses) and best["epoch"] == losses.index(min(losses)) + 1
    assert best["epoch"] < 6, losses
    _assert_same(_weights(res.output_dir), _weights(res.output_dir / "best"))
    last = train(
        _cfg(bases, task_data, tmp_path / "last", num_epochs=6, eval_file=str(shifted), keep_best=False)
    )
    assert any(
        not _weights(last.output_dir)[k].equal(_weights(res.output_dir)[k]) for k in _weights(res.output_dir)
    )


def test_cli_writes_adapter_metrics_and_resolved_config(bases, task_data, tmp_path, capsys, monkeypatch):
    train_file, eval_file = task_data["seq-cls"]
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "method": "lora",
                "task": "seq-cls",
                "num_epochs": 1,
                "method_config": {"r": 2},
                "progress": False,
            }
        )
    )
    monkeypatch.setenv("SWAPYARD_BASE_MODEL", str(bases["bert"]))
    out = tmp_path / "out"
    argv = [
        "--config",
        str(config_file),
        "--train-file",
        str(train_file),
        "--eval-file",
        str(eval_file),
        "--output-dir",
        str(out),
        "--lr",
        "0.02",
        "--method-config",
        '{"lora_alpha": 4}',
    ]
    assert main(argv) == 0
    assert "adapter written to" in capsys.readouterr().out
    resolved = yaml.safe_load((out / "train_config.yaml").read_text())
    assert resolved["base_model"] == str(bases["bert"]) and resolved["learning_rate"] == 0.02
    assert resolved["method_config"] == {"r": 2, "lora_alpha": 4} and resolved["num_epochs"] == 1
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 2 and adapter["lora_alpha"] == 4 and adapter["peft_type"] == "LORA"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"initial", "final", "best", "epochs"} and "eval_accuracy" in metrics["final"]
    # The same command again refuses to overwrite; --overwrite replaces.
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_swapyard_command_dispatches_train(tmp_path, capsys):
    from swapyard.cli import main as swapyard

    assert swapyard(["train", "--base-model", "x"]) == 2  # config error, reported by swapyard.train_cli
    assert "required but not given" in capsys.readouterr().err
