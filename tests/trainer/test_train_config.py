"""TrainConfig resolution: defaults < config file < SWAPYARD_* environment < flags, and clear errors."""

from __future__ import annotations

import json

import pytest

from adapters_core.registry import train_method
from swapyard.train_cli import build_parser, parse_config
from trainer.config import TrainConfig, resolve_config
from trainer.errors import TrainConfigError

REQUIRED = [
    "--base-model",
    "m",
    "--method",
    "lora",
    "--task",
    "causal-lm",
    "--train-file",
    "t.jsonl",
    "--output-dir",
    "o",
]


def test_defaults_and_method_learning_rate():
    cfg = parse_config(REQUIRED, environ={})
    assert cfg.batch_size == 8 and cfg.num_epochs == 3 and cfg.prompt_column == "prompt"
    assert cfg.learning_rate is None and cfg.lr == train_method("lora")[1].learning_rate
    assert cfg.resolved()["learning_rate"] == train_method("lora")[1].learning_rate


def test_precedence_flag_over_env_over_file(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        "base_model: from-file\nmethod: ia3\ntask: seq-cls\ntrain_file: f.jsonl\noutput_dir: out\n"
        "batch-size: 4\nnum_epochs: 7\nseed: 1\nmethod_config: {r: 4, lora_alpha: 8}\n"
    )
    env = {
        "SWAPYARD_NUM_EPOCHS": "5",
        "SWAPYARD_SEED": "2",
        "SWAPYARD_METHOD_CONFIG": '{"lora_alpha": 32}',
        "SWAPYARD_OVERWRITE": "true",
    }
    cfg = parse_config(["--config", str(config_file), "--seed", "3", "--method", "lora"], environ=env)
    assert cfg.base_model == "from-file"  # file only
    assert cfg.batch_size == 4  # file (dashed key accepted)
    assert cfg.num_epochs == 5  # env beats file
    assert cfg.seed == 3  # flag beats env and file
    assert cfg.method == "lora"  # flag beats file
    assert cfg.overwrite is True  # env bool
    assert cfg.method_config == {"r": 4, "lora_alpha": 32}  # merged key by key


def test_config_file_from_env_and_json_format(tmp_path):
    config_file = tmp_path / "run.json"
    config_file.write_text(
        json.dumps(
            {
                "base_model": "b",
                "method": "prompt-tuning",
                "task": "causal-lm",
                "train_file": "t.jsonl",
                "output_dir": "o",
                "lr": 1,
            }
        ).replace('"lr": 1', '"learning_rate": 0.5')
    )
    cfg = parse_config([], environ={"SWAPYARD_CONFIG": str(config_file)})
    assert cfg.method == "prompt-tuning" and cfg.lr == 0.5


def test_flag_aliases_and_bool_negation():
    cfg = parse_config(
        [*REQUIRED, "--lr", "0.01", "--epochs", "2", "--no-bf16"], environ={"SWAPYARD_BF16": "1"}
    )
    assert cfg.lr == 0.01 and cfg.num_epochs == 2 and cfg.bf16 is False


def test_every_field_has_a_flag():
    flags = {a.dest for a in build_parser()._actions}
    assert set(TrainConfig.model_fields) <= flags


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        ([], {}, "--base-model (config key 'base_model', env SWAPYARD_BASE_MODEL): required"),
        ([*REQUIRED, "--batch-size", "0"], {}, "--batch-size"),
        (REQUIRED, {"SWAPYARD_LEARNING_RATE": "fast"}, "SWAPYARD_LEARNING_RATE"),
        ([*REQUIRED, "--method-config", "r=8"], {}, "JSON object"),
        ([*REQUIRED, "--push-to-hub"], {}, "--hub-model-id"),
        ([*REQUIRED, "--overwrite", "--resume-from-checkpoint", "latest"], {}, "contradict"),
    ],
)
def test_invalid_values_name_the_flag(argv, env, needle):
    with pytest.raises(TrainConfigError) as err:
        parse_config(argv, environ=env)
    assert needle in str(err.value)


def test_unknown_config_file_key_is_refused(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("base_model: b\nlearnig_rate: 0.1\n")
    with pytest.raises(TrainConfigError, match=r"unknown option\(s\) \['learnig_rate'\]"):
        resolve_config({}, config_file=config_file, environ={})


def test_bad_choice_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        parse_config([*REQUIRED[:2], "--method", "lora2"], environ={})
    assert "invalid choice: 'lora2'" in capsys.readouterr().err
