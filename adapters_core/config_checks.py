"""Value rules for adapter configs: every number finite and in a sane range, names strings, JSON shallow.

A config class declares its numeric fields once, as a table read by `AdapterConfig.__post_init__`:

    NUMBERS: ClassVar[dict[str, Number]] = {"r": Number(int, 1, MAX_RANK, hint='set e.g. "r": 8')}

so a NaN `lora_alpha` or an `r` of 10**9 is refused when the file is read — by the library and the server
alike — with a message that names the field and the fix, instead of serving empty or garbage text later.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import AdapterConfigError

MAX_RANK = 1 << 16  # far above any trained LoRA rank; a bigger r only makes a file that cannot be served
MAX_ABS_ALPHA = 1e6  # lora_alpha / r is the LoRA scale: trained adapters use tens to a few thousands
MAX_VIRTUAL_TOKENS = 1 << 16
MAX_WIDTH = 1 << 20  # hidden sizes, token dims, encoder widths
MAX_LAYERS = 1 << 12
MAX_HEADS = 1 << 12
MAX_STEPS = 1 << 40  # training schedule counters (AdaLoRA's total_step, tinit, ...)
MAX_JSON_DEPTH = 32  # PEFT configs nest 3 levels at most; a deeper document is not a config


@dataclass(frozen=True)
class Number:
    """The rule of one numeric field.

    kind: `int` (integers only) or `float` (any real number, ints too); never a bool, always finite.
    low/high: inclusive bounds (None: unbounded); `high_open` makes `high` exclusive; `abs_high` bounds |x|.
    nullable: null (None) is allowed. hint: how to fix a bad value.
    """

    kind: type
    low: float | None = None
    high: float | None = None
    high_open: bool = False
    abs_high: float | None = None
    nullable: bool = False
    hint: str = ""

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        if self.kind is int and self.low == 1:
            return "a positive integer" + (f" <= {self.high:g}" if self.high is not None else "")
        if self.abs_high is not None:
            return f"{what} with absolute value <= {self.abs_high:g}"
        if self.low is not None and self.high is not None:
            close = ")" if self.high_open else "]"
            return f"{what} in [{self.low:g}, {self.high:g}{close}"
        if self.low is not None:
            return f"{what} >= {self.low:g}"
        return what

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.abs_high is not None and abs(value) > self.abs_high:
            return False
        if self.low is not None and value < self.low:
            return False
        if self.high is None:
            return True
        return value < self.high if self.high_open else value <= self.high


def check_number(name: str, value: Any, rule: Number) -> None:
    """Raise `AdapterConfigError` naming the field `name` unless `value` satisfies `rule`."""
    if not rule.accepts(value):
        hint = f"; {rule.hint}" if rule.hint else ""
        null = " or null" if rule.nullable else ""
        raise AdapterConfigError(f"{name} must be {rule.describe()}{null}, got {value!r}{hint}.")


def check_numbers(config: Any, rules: dict[str, Number]) -> None:
    """Check every field of `config` that `rules` names."""
    for name, rule in rules.items():
        check_number(name, getattr(config, name), rule)


def check_number_map(name: str, mapping: Any, rule: Number) -> None:
    """A `{module pattern: number}` field such as LoRA's `rank_pattern` / `alpha_pattern`."""
    if mapping is None:
        return
    if not isinstance(mapping, dict):
        raise AdapterConfigError(
            f"{name} must be an object mapping module names to numbers, got {mapping!r}."
        )
    for key, value in mapping.items():
        check_number(f"{name}[{key!r}]", value, rule)


def check_names(name: str, value: Any, *, regex_ok: bool = True) -> None:
    """A module-name field: null, a string (a regex, where `regex_ok`), or a list of strings."""
    if value is None or (regex_ok and isinstance(value, str)):
        return
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return
    shape = "a list of module names" + (" or one regex string" if regex_ok else "")
    raise AdapterConfigError(f"{name} must be {shape}, got {value!r}.")


def check_bools(config: Any, names: Iterable[str]) -> None:
    """Boolean switches must be JSON booleans: the string "false" is true in Python, a silent wrong answer."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, bool):
            raise AdapterConfigError(f"{name} must be true or false, got {value!r}.")


def check_depth(data: Any, *, source: str, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse documents nested deeper than `limit` (iteratively: no recursion on hostile input)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise AdapterConfigError(
                f"{source}: the JSON nests deeper than {limit} levels; an adapter config is a flat object."
            )
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _count(high: int, hint: str = "") -> Number:
    return Number(int, 1, high, nullable=True, hint=hint)


# The fields every prompt-learning config (prompt tuning, P-tuning, prefix tuning) shares; null ones are
# filled from the base model's config when the adapter is built.
PROMPT_LEARNING_NUMBERS: dict[str, Number] = {
    "num_virtual_tokens": _count(MAX_VIRTUAL_TOKENS, "set e.g. num_virtual_tokens=20"),
    "token_dim": _count(MAX_WIDTH, "it is the base model's hidden size; set it to null to derive it"),
    "num_transformer_submodules": _count(2, "1 (decoder-only, encoder-only) or 2 (seq2seq), or null"),
    "num_attention_heads": _count(MAX_HEADS, "set it to null to derive it from the base model"),
    "num_layers": _count(MAX_LAYERS, "set it to null to derive it from the base model"),
}
