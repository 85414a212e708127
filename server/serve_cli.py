"""`swapyard serve`: flags generated from `Settings`, so every option has a flag and a `SWAPYARD_` variable.

    swapyard serve --base-model PATH_OR_HUB_ID [--adapter NAME=SOURCE ...] [--adapter-dir DIR] [--host --port]
    swapyard serve --demo          # the embedded demo (also what happens without --base-model)

Precedence: flag > environment variable > default.
"""

from __future__ import annotations

import argparse
import logging
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from .settings import Settings, env_name

FLAG_NAMES = {"adapters": "--adapter"}  # repeatable flag, singular like the CLI contract says


def _arg_type(annotation: Any) -> tuple[Any, list[str] | None]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _arg_type(next(a for a in typing.get_args(annotation) if a is not type(None)))
    if origin is typing.Literal:
        return str, [str(a) for a in typing.get_args(annotation)]
    return annotation, None


def _help(name: str, field: FieldInfo) -> str:
    """The flag's help: description, default (when there is one) and environment variable."""
    default = field.get_default(call_default_factory=True)
    if isinstance(default, bool):
        default = str(default).lower()
    shown = "" if default is None or default == [] else f" (default: {default})"
    return f"{field.description}{shown} [env {env_name(name)}]"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swapyard serve",
        description="Serve one frozen base model with many PEFT adapters over HTTP.",
        epilog="Every flag also reads from an environment variable SWAPYARD_<FLAG> (e.g. SWAPYARD_PORT). "
        "SWAPYARD_ADAPTERS takes comma-separated NAME=SOURCE pairs. Without --base-model the embedded demo "
        "is served.",
    )
    for name, field in Settings.model_fields.items():
        flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        help_text = _help(name, field)
        if name == "adapters":
            parser.add_argument(
                flag, dest=name, action="append", default=None, metavar="NAME=SOURCE", help=help_text
            )
            continue
        if name == "demo":  # `--demo` alone is the chat demo
            parser.add_argument(
                flag,
                dest=name,
                nargs="?",
                const="chat",
                default=None,
                choices=["chat", "sentiment"],
                help=help_text,
            )
            continue
        kind, choices = _arg_type(field.annotation)
        if kind is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(flag, dest=name, type=kind, choices=choices, default=None, help=help_text)
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Flags (only those given) over the environment over defaults."""
    given = {k: v for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}
    return Settings(**given)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `swapyard serve`; returns the exit status."""
    try:
        settings = parse_settings(argv)
    except ValidationError as exc:
        print(f"swapyard serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.demo and settings.base_model:
        print("swapyard serve: give either --demo or --base-model, not both", file=sys.stderr)
        return 2
    if settings.base_model is None:
        from .demo import prepare

        demo, demo_name = prepare(settings.demo, settings.demo_dir)  # progress bar on first run, then instant
        settings = settings.model_copy(
            update={
                "base_model": str(demo.base_dir),
                "adapter_dir": settings.adapter_dir or str(demo.adapter_dir),
                "served_model_name": settings.served_model_name or demo_name,
            }
        )
    import uvicorn

    from .app import create_app
    from .shutdown import DrainingServer

    app = create_app(settings)
    print(f"swapyard: serving {settings.model_name} on http://{settings.host}:{settings.port}", flush=True)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
        # Idle keep-alive connections close after this; a body that stalls gets a 408 from
        # ReceiveTimeoutMiddleware (--request-read-timeout-s).
        timeout_keep_alive=settings.keep_alive_timeout_s,
    )
    DrainingServer(config, app.state.swapyard, settings.drain_timeout_s).run()
    return 0
