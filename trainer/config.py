"""`TrainConfig`: everything one training run needs, and how it is resolved from four layers.

Precedence, lowest to highest: field defaults < config file (YAML or JSON) < environment variables
(`SWAPYARD_<FIELD>`, e.g. `SWAPYARD_LEARNING_RATE=3e-4`) < command-line flags (`--learning-rate 3e-4`).
So a compose file or a Kubernetes manifest can set any flag without a wrapper script, and a flag typed by
hand always wins. `method_config` (the adapter method's own options, e.g. LoRA's `r`) merges key by key
across the layers instead of being replaced whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import TrainConfigError

Task = Literal["causal-lm", "seq2seq-lm", "seq-cls", "token-cls", "image-cls", "semantic-seg"]
TASKS: tuple[str, ...] = get_args(Task)
ENV_PREFIX = "SWAPYARD_"


class MethodNames:
    """The `--method` names: adapters_core's method table (`registry.train_names()`), read only when a
    name is checked, so `swapyard train --help` stays fast (importing adapters_core loads torch)."""

    def names(self) -> tuple[str, ...]:
        from adapters_core.registry import train_names

        return train_names()

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


METHOD_NAMES = MethodNames()


class TrainConfig(BaseModel):
    """One training run. Field names are the config-file keys; flags are `--field-name`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # -- what to train -----------------------------------------------------------------------------
    base_model: str = Field(description="base model: local directory or Hugging Face Hub id")
    base_model_revision: str | None = Field(None, description="Hub revision of the base model")
    method: str = Field(description="adapter method, e.g. lora, dora, adalora, ia3, prompt-tuning")
    method_config: dict[str, Any] = Field(
        default_factory=dict,
        description='options of the method\'s config as a JSON object, e.g. \'{"r": 8, "lora_alpha": 16}\'',
    )
    task: Task = Field(description="what the model learns to do")
    # -- data --------------------------------------------------------------------------------------
    train_file: str = Field(description="training data, JSONL or CSV (image-cls: also an image folder)")
    eval_file: str | None = Field(
        None, description="evaluation data, JSONL or CSV or image folder (evaluated every epoch)"
    )
    prompt_column: str = Field("prompt", description="causal-lm: column with the prompt (no loss)")
    completion_column: str = Field("completion", description="causal-lm: column with the completion")
    source_column: str = Field("source", description="seq2seq-lm: column with the encoder input")
    target_column: str = Field("target", description="seq2seq-lm: column with the decoder target")
    text_column: str = Field("text", description="seq-cls: column with the text")
    text_pair_column: str = Field(
        "text_pair", description="seq-cls: column with the second text of a pair (used if present)"
    )
    label_column: str = Field("label", description="seq-cls, image-cls: column with the label")
    tokens_column: str = Field("tokens", description="token-cls: column with the list of words")
    tags_column: str = Field("tags", description="token-cls: column with one tag per word")
    image_column: str = Field("image", description="image-cls, semantic-seg: column with the image path")
    mask_column: str = Field("mask", description="semantic-seg: column with the label-mask PNG path")
    max_length: int = Field(512, gt=1, description="truncate tokenized examples to this many tokens")
    # -- output ------------------------------------------------------------------------------------
    output_dir: str = Field(description="where the adapter, metrics.json and train_config.yaml go")
    overwrite: bool = Field(False, description="allow writing into a non-empty output directory")
    keep_best: bool = Field(
        True, description="with an eval file, the saved adapter is the epoch with the lowest eval loss"
    )
    save_steps: int | None = Field(
        None, gt=0, description="also checkpoint every N optimizer steps (always at each epoch end)"
    )
    save_total_limit: int = Field(2, ge=1, description="keep at most this many checkpoints")
    resume_from_checkpoint: str | None = Field(
        None, description="checkpoint directory to resume from, or 'latest' (newest in output_dir)"
    )
    push_to_hub: bool = Field(False, description="upload the output directory to the Hugging Face Hub")
    hub_model_id: str | None = Field(None, description="Hub repo id ('owner/name') for --push-to-hub")
    hub_private: bool = Field(False, description="create the Hub repo as private")
    # -- optimisation ------------------------------------------------------------------------------
    learning_rate: float | None = Field(
        None, gt=0, description="peak learning rate (default depends on the method)"
    )
    num_epochs: int = Field(3, ge=1, description="passes over the training data")
    batch_size: int = Field(8, ge=1, description="examples per micro-batch on each process")
    eval_batch_size: int | None = Field(
        None, ge=1, description="examples per eval batch (default: batch size)"
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps (wins over --warmup-ratio)")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="warm-up as a fraction of all steps")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, ge=0.0, description="clip the gradient norm to this (0 disables)")
    seed: int = Field(42, description="seed for adapter init, data order and dropout")
    bf16: bool = Field(True, description="bf16 autocast on CUDA devices (ignored on CPU)")
    device: str | None = Field(None, description="'cpu' or 'cuda' (default: cuda if available)")
    progress: bool = Field(True, description="show the progress bar")

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        if method not in METHOD_NAMES:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHOD_NAMES)}")
        return method

    @model_validator(mode="after")
    def _check_combinations(self) -> TrainConfig:
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id: set --hub-model-id owner/name")
        if self.overwrite and self.resume_from_checkpoint:
            raise ValueError(
                "overwrite and resume_from_checkpoint contradict each other: --overwrite starts afresh "
                "(and deletes old checkpoints); drop one of them"
            )
        return self

    @property
    def lr(self) -> float:
        """The learning rate actually used (the method's default when none was given, registry.TrainName)."""
        if self.learning_rate is not None:
            return self.learning_rate
        from adapters_core.registry import train_method

        return train_method(self.method)[1].learning_rate

    def resolved(self) -> dict[str, Any]:
        """The config as written to `train_config.yaml`: every default filled in."""
        data = self.model_dump()
        data["learning_rate"] = self.lr
        data["eval_batch_size"] = self.eval_batch_size or self.batch_size
        return data


FIELDS: tuple[str, ...] = tuple(TrainConfig.model_fields)


def env_name(field: str) -> str:
    """`learning_rate` -> `SWAPYARD_LEARNING_RATE`."""
    return ENV_PREFIX + field.upper()


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML or JSON config file (YAML is a superset of JSON); keys may use `-` or `_`."""
    p = Path(path)
    if not p.is_file():
        raise TrainConfigError(f"config file {p} does not exist; check --config / {env_name('config')}.")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TrainConfigError(f"config file {p} is not valid YAML/JSON: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TrainConfigError(
            f"config file {p}: expected a mapping of option: value, got {type(data).__name__}."
        )
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The `SWAPYARD_<FIELD>` variables that are set (strings; pydantic converts them)."""
    values: dict[str, Any] = {}
    for field in FIELDS:
        raw = environ.get(env_name(field))
        if raw is None or raw == "":
            continue
        values[field] = parse_method_config(raw, source=env_name(field)) if field == "method_config" else raw
    return values


def parse_method_config(raw: str | Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """`method_config` given as a JSON object string (flags, env) or already a mapping (config file)."""
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TrainConfigError(
            f"{source}: method config must be a JSON object such as '{{\"r\": 8}}'; got {raw!r} ({exc})."
        ) from exc
    if not isinstance(value, dict):
        raise TrainConfigError(f"{source}: method config must be a JSON object, got {type(value).__name__}.")
    return value


def resolve_config(
    cli_values: Mapping[str, Any],
    *,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> TrainConfig:
    """Merge defaults < file < environment < flags into a validated `TrainConfig`.

    `cli_values` holds only the flags the user actually gave (None means "not given").
    """
    environ = os.environ if environ is None else environ
    if config_file is None:
        config_file = environ.get(env_name("config")) or None
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        layers.append((f"config file {config_file}", read_config_file(config_file)))
    layers.append(("environment", read_env(environ)))
    layers.append(("command line", {k: v for k, v in cli_values.items() if v is not None}))

    merged: dict[str, Any] = {}
    for source, layer in layers:
        unknown = sorted(set(layer) - set(FIELDS))
        if unknown:
            raise TrainConfigError(
                f"{source}: unknown option(s) {unknown}; valid options are: {', '.join(FIELDS)}."
            )
        for key, value in layer.items():
            if key == "method_config":
                merged["method_config"] = {
                    **merged.get("method_config", {}),
                    **parse_method_config(value, source=source),
                }
            else:
                merged[key] = value
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as exc:
        raise TrainConfigError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    """Turn pydantic's errors into one message per field that names the flag and its variable."""
    lines = ["invalid training configuration:"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        field = loc[0] if loc else ""
        if field in FIELDS:
            where = f"--{field.replace('_', '-')} (config key {field!r}, env {env_name(field)})"
            if err["type"] == "missing":
                lines.append(f"  {where}: required but not given")
                continue
            lines.append(f"  {where}: {err['msg']} (got {err.get('input')!r})")
        else:
            lines.append(f"  {err['msg']}")
    return "\n".join(lines)
