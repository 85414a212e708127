"""`swapyard train`: flags generated from `TrainConfig`, so every config key has a flag and an env variable.

    swapyard train [--config FILE] --base-model X --method lora --task causal-lm \\
        --train-file train.jsonl [--eval-file eval.jsonl] --output-dir out [--lr 2e-4 --epochs 3 ...]

Multi-GPU / multi-node: the same command under torchrun, e.g.
`torchrun --nproc_per_node 8 -m swapyard train --config run.yaml` (one process per GPU, DDP).
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Sequence

from trainer.config import METHOD_NAMES, TrainConfig, env_name, resolve_config
from trainer.errors import TrainerError

from .flags import add_model_flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swapyard train",
        description="Train a PEFT-format adapter over a frozen base model.",
        epilog="Every flag can also come from a config file (--config, YAML or JSON, keys = flag names with "
        "underscores) or an environment variable SWAPYARD_<FLAG> (e.g. SWAPYARD_LEARNING_RATE). Precedence: "
        "flag > environment > config file > default.",
    )
    parser.add_argument("--config", default=None, help=f"YAML or JSON config file [env {env_name('config')}]")
    return add_model_flags(
        parser,
        TrainConfig,
        env_name,
        aliases={"learning_rate": ["--lr"], "num_epochs": ["--epochs"]},
        # adapters_core's method table, read when a value is checked (not for --help)
        overrides={"method": {"choices": METHOD_NAMES, "metavar": "METHOD"}},
    )


def parse_config(
    argv: Sequence[str] | None = None, environ: typing.Mapping[str, str] | None = None
) -> TrainConfig:
    """Flags (+ env + config file) -> validated `TrainConfig`; raises `TrainerError` on bad input."""
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config")
    return resolve_config(args, config_file=config_file, environ=environ)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `swapyard train`; returns the process exit status."""
    from trainer.run import train  # imports torch/transformers/adapters_core: keep --help fast

    try:
        cfg = parse_config(argv)
        result = train(cfg)
    except TrainerError as exc:
        print(f"swapyard train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "swapyard train: interrupted; continue with --resume-from-checkpoint latest (same output dir).",
            file=sys.stderr,
        )
        return 130
    if not result.is_main:
        return 0
    final = result.metrics.get("final", {})
    summary = ", ".join(
        f"{k}={v:.4g}" for k, v in final.items() if k.startswith("eval_") and isinstance(v, float)
    )
    print(f"adapter written to {result.output_dir}" + (f" ({summary})" if summary else ""))
    return 0
