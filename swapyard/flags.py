"""The one settings-to-flags mechanism: argparse flags generated from a pydantic model's fields.

Both `swapyard serve` (server.settings.Settings) and `swapyard train` (trainer.config.TrainConfig) use it, so a
new field gets its flag, its help (description, default, environment variable) and its type checks in one place.
Every flag defaults to None: a caller keeps only the flags that were given and lets the model's own sources
(environment, config file, defaults) fill the rest.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo


def arg_type(annotation: Any) -> tuple[Any, list[str] | None]:
    """(python type, choices) of a field annotation; Optional is unwrapped, Literal becomes choices, a dict
    is taken as a string (a JSON object the model's resolver parses)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return arg_type(next(a for a in typing.get_args(annotation) if a is not type(None)))
    if origin is typing.Literal:
        return str, [str(a) for a in typing.get_args(annotation)]
    if origin is dict or annotation is dict:
        return str, None
    return annotation, None


def shown_default(field: FieldInfo) -> str:
    """How --help shows a field's default: 'required', 'default: X', or '' when there is nothing to show."""
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    if default is None or default == [] or default == {}:
        return ""
    if isinstance(default, bool):
        default = str(default).lower()
    return f"default: {default}"


def add_model_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    env_name: Callable[[str], str],
    *,
    flag_names: Mapping[str, str] | None = None,
    aliases: Mapping[str, list[str]] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> argparse.ArgumentParser:
    """Add `--field-name` for every field of `model` (dest = the field name, default None).

    flag_names: field -> flag instead of `--field-name`; aliases: field -> extra flags (e.g. `--lr`);
    overrides: field -> argparse keyword arguments that replace the generated ones (e.g. a repeatable flag).
    """
    flag_names, aliases, overrides = flag_names or {}, aliases or {}, overrides or {}
    for name, field in model.model_fields.items():
        default = shown_default(field)
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": None,
            "help": f"{field.description}{f' ({default})' if default else ''} [env {env_name(name)}]",
        }
        kind, choices = arg_type(field.annotation)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            if choices:
                kwargs["choices"] = choices
        kwargs.update(overrides.get(name, {}))
        flag = flag_names.get(name, "--" + name.replace("_", "-"))
        parser.add_argument(flag, *aliases.get(name, []), **kwargs)
    return parser


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that were given on the command line (generated flags default to None)."""
    return {k: v for k, v in vars(args).items() if v is not None}
