"""`swapyard train`: flags generated from `TrainConfig`, so every config key has a flag and an env variable.

    swapyard train [--config FILE] --base-model X --method lora --task causal-lm \\
        --train-file train.jsonl [--eval-file eval.jsonl] --output-dir out [--lr 2e-4 --epochs 3 ...]

Multi-GPU / multi-node: the same command under torchrun, e.g.
`torchrun --nproc_per_node 8 -m trainer --config run.yaml` (one process per GPU, DDP).
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

from .config import METHOD_NAMES, TrainConfig, env_name, resolve_config
from .errors import TrainerError

ALIASES = {"learning_rate": ["--lr"], "num_epochs": ["--epochs"]}


def _arg_type(annotation: Any) -> tuple[Any, list[str] | None]:
    """(python type, choices) of a field annotation; Optional is unwrapped, Literal becomes choices."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _arg_type(inner[0])
    if origin is typing.Literal:
        return str, [str(a) for a in typing.get_args(annotation)]
    if origin is dict or annotation is dict:
        return str, None  # a JSON object, parsed by resolve_config
    return annotation, None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swapyard train",
        description="Train a PEFT-format adapter over a frozen base model.",
        epilog="Every flag can also come from a config file (--config, YAML or JSON, keys = flag names with "
        "underscores) or an environment variable SWAPYARD_<FLAG> (e.g. SWAPYARD_LEARNING_RATE). Precedence: "
        "flag > environment > config file > default.",
    )
    parser.add_argument("--config", default=None, help=f"YAML or JSON config file [env {env_name('config')}]")
    for name, field in TrainConfig.model_fields.items():
        kind, choices = _arg_type(field.annotation)
        kwargs: dict[str, Any] = {"dest": name, "default": None}
        default = (
            "required" if field.is_required() else f"default {field.get_default(call_default_factory=True)!r}"
        )
        kwargs["help"] = f"{field.description} ({default}) [env {env_name(name)}]"
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            if choices:
                kwargs["choices"] = choices
        if name == "method":  # adapters_core's method table, read when a value is checked (not for --help)
            kwargs.update(choices=METHOD_NAMES, metavar="METHOD")
        parser.add_argument("--" + name.replace("_", "-"), *ALIASES.get(name, []), **kwargs)
    return parser


def parse_config(
    argv: Sequence[str] | None = None, environ: typing.Mapping[str, str] | None = None
) -> TrainConfig:
    """Flags (+ env + config file) -> validated `TrainConfig`; raises `TrainerError` on bad input."""
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config")
    return resolve_config(args, config_file=config_file, environ=environ)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `swapyard train`; returns the process exit status."""
    from .run import train  # imports torch/transformers/adapters_core: keep --help fast

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


if __name__ == "__main__":
    raise SystemExit(main())
