"""Read JSONL/CSV data files and check them against the task before anything is loaded or trained.

Each task reads a few named columns (defaults in `TrainConfig`):

    causal-lm   prompt, completion        loss only on the completion
    seq2seq-lm  source, target
    seq-cls     text (+ text_pair), label
    token-cls   tokens, tags              a list of words and one tag per word

Rows come back as `Record`s holding only those columns, values normalised (labels as strings, token lists
as lists). Errors name the file, the row, the column, the columns that were found and the flag to set.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .errors import DataError, EmptyDataError, MissingColumnError, UnseenLabelError

Row = dict[str, Any]


@dataclass(frozen=True)
class Columns:
    """The columns one task reads: role -> (column name, flag that renames it)."""

    required: dict[str, tuple[str, str]]
    optional: dict[str, tuple[str, str]]


def task_columns(cfg: TrainConfig) -> Columns:
    """Which columns `cfg.task` reads, with the names configured for this run."""
    if cfg.task == "causal-lm":
        return Columns(
            {
                "prompt": (cfg.prompt_column, "--prompt-column"),
                "completion": (cfg.completion_column, "--completion-column"),
            },
            {},
        )
    if cfg.task == "seq2seq-lm":
        return Columns(
            {
                "source": (cfg.source_column, "--source-column"),
                "target": (cfg.target_column, "--target-column"),
            },
            {},
        )
    if cfg.task == "seq-cls":
        return Columns(
            {"text": (cfg.text_column, "--text-column"), "label": (cfg.label_column, "--label-column")},
            {"text_pair": (cfg.text_pair_column, "--text-pair-column")},
        )
    return Columns(
        {"tokens": (cfg.tokens_column, "--tokens-column"), "tags": (cfg.tags_column, "--tags-column")}, {}
    )


# -- readers -----------------------------------------------------------------------------------------


def read_rows(path: str | Path) -> list[Row]:
    """All rows of a `.jsonl`/`.ndjson` (one JSON object per line) or `.csv`/`.tsv` file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {p} does not exist.")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return _read_jsonl(p)
    if suffix in (".csv", ".tsv"):
        with p.open(newline="", encoding="utf-8") as fh:
            return [dict(r) for r in csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")]
    raise DataError(f"data file {p}: unknown format {suffix!r}; use .jsonl (one JSON object a line) or .csv.")


def _read_jsonl(p: Path) -> list[Row]:
    rows: list[Row] = []
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{p} line {lineno}: not valid JSON ({exc.msg}); JSONL needs one object a line."
                ) from exc
            if not isinstance(row, dict):
                raise DataError(f"{p} line {lineno}: expected a JSON object, got {type(row).__name__}.")
            rows.append(row)
    return rows


# -- validation --------------------------------------------------------------------------------------


@dataclass
class Record:
    """One example, reduced to the task's columns (role names as keys)."""

    values: dict[str, Any]
    row_number: int  # 1-based, for messages


def load_records(path: str | Path, cfg: TrainConfig) -> list[Record]:
    """Read `path` and keep the task's columns; raise before training on missing columns or no rows."""
    rows = read_rows(path)
    if not rows:
        raise EmptyDataError(f"{path} has no rows; a {cfg.task} run needs at least one example.")
    cols = task_columns(cfg)
    found = list(rows[0].keys())
    for role, (name, flag) in cols.required.items():
        if name not in rows[0]:
            raise MissingColumnError(
                f"{path}: column {name!r} ({cfg.task} {role}) not found; columns found: {found}. "
                f"Set {flag} to the column that holds the {role}s."
            )
    present_optional = {role: spec for role, spec in cols.optional.items() if spec[0] in rows[0]}
    records = []
    for i, row in enumerate(rows, start=1):
        values: dict[str, Any] = {}
        for role, (name, flag) in {**cols.required, **present_optional}.items():
            value = row.get(name)
            if value is None or value == "":
                raise DataError(f"{path} row {i}: column {name!r} ({role}) is empty or missing ({flag}).")
            values[role] = _normalise(role, value, path, i, name)
        if cfg.task == "token-cls" and len(values["tokens"]) != len(values["tags"]):
            raise DataError(
                f"{path} row {i}: {len(values['tokens'])} tokens but {len(values['tags'])} tags; "
                "token-cls needs exactly one tag per word."
            )
        records.append(Record(values, i))
    return records


def _normalise(role: str, value: Any, path: str | Path, row: int, name: str) -> Any:
    if role == "label":
        return _label_str(value)
    if role in ("tokens", "tags"):
        items = _as_list(value, path, row, name)
        return [_label_str(t) if role == "tags" else str(t) for t in items]
    if not isinstance(value, str):
        raise DataError(f"{path} row {row}: column {name!r} must be text, got {type(value).__name__}.")
    return value


def _label_str(value: Any) -> str:
    # JSON labels may be ints or bools; map every label to its string so 1 and "1" are the same class.
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _as_list(value: Any, path: str | Path, row: int, name: str) -> list[Any]:
    """A JSON list, or (CSV) a JSON list as text or whitespace-separated words."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path} row {row}: column {name!r} looks like a JSON list but is not one ({exc.msg})."
                ) from exc
            if isinstance(parsed, list):
                return parsed
        return text.split()
    raise DataError(f"{path} row {row}: column {name!r} must be a list of words, got {type(value).__name__}.")


# -- labels ------------------------------------------------------------------------------------------


def label_set(records: Iterable[Record], task: str) -> set[str]:
    """Every label (seq-cls) or tag (token-cls) in `records`."""
    if task == "seq-cls":
        return {r.values["label"] for r in records}
    return {t for r in records for t in r.values["tags"]}


def build_label_maps(labels: Iterable[str]) -> tuple[dict[str, int], dict[int, str]]:
    """`label2id`, `id2label` in a stable order: numeric labels by value, others alphabetically."""
    unique = set(labels)
    numeric = bool(unique) and all(_is_int(lab) for lab in unique)
    ordered = sorted(unique, key=int) if numeric else sorted(unique)
    label2id = {lab: i for i, lab in enumerate(ordered)}
    return label2id, {i: lab for lab, i in label2id.items()}


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def check_eval_labels(train: list[Record], evaluation: list[Record], cfg: TrainConfig) -> None:
    """An eval label that training never saw has no output unit to predict it: refuse before training."""
    known = label_set(train, cfg.task)
    for rec in evaluation:
        seen = [rec.values["label"]] if cfg.task == "seq-cls" else rec.values["tags"]
        for lab in seen:
            if lab not in known:
                what = "label" if cfg.task == "seq-cls" else "tag"
                raise UnseenLabelError(
                    f"{cfg.eval_file} row {rec.row_number}: {what} {lab!r} never appears in {cfg.train_file} "
                    f"(training {what}s: {sorted(known)}); the classifier cannot learn it. Add examples of "
                    f"{lab!r} to the training data or drop it from the eval data."
                )
