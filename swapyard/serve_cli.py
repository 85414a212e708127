"""`swapyard serve`: flags generated from `Settings`, so every option has a flag and a `SWAPYARD_` variable.

    swapyard serve --base-model PATH_OR_HUB_ID [--adapter NAME=SOURCE ...] [--adapter-dir DIR] [--host --port]
    swapyard serve --demo          # the embedded demo (also what happens without --base-model)

Precedence: flag > environment variable > default.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from server.settings import Settings, env_name

from .flags import add_model_flags, given


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swapyard serve",
        description="Serve one frozen base model with many PEFT adapters over HTTP.",
        epilog="Every flag also reads from an environment variable SWAPYARD_<FLAG> (e.g. SWAPYARD_PORT). "
        "SWAPYARD_ADAPTERS takes comma-separated NAME=SOURCE pairs. Without --base-model the embedded demo "
        "is served.",
    )
    return add_model_flags(
        parser,
        Settings,
        env_name,
        flag_names={"adapters": "--adapter"},  # repeatable flag, singular like the CLI contract says
        overrides={
            "adapters": {"action": "append", "metavar": "NAME=SOURCE", "type": str},
            # `--demo` alone is the chat demo
            "demo": {"nargs": "?", "const": "chat", "choices": ["chat", "sentiment"], "type": str},
        },
    )


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Flags (only those given) over the environment over defaults."""
    return Settings(**given(build_parser().parse_args(argv)))


def resolve_demo(settings: Settings) -> Settings:
    """Without --base-model: build (first run) or find the embedded demo and serve it.

    The entry point does this, not the server: the server serves a base model and adapters and knows nothing
    about where they came from.
    """
    if settings.base_model is not None:
        return settings
    from demo import prepare

    built, demo_name = prepare(settings.demo, settings.demo_dir)  # progress bar on first run, then instant
    return settings.model_copy(
        update={
            "base_model": str(built.base_dir),
            "adapter_dir": settings.adapter_dir or str(built.adapter_dir),
            "served_model_name": settings.served_model_name or demo_name,
        }
    )


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
    settings = resolve_demo(settings)
    from server.app import create_app

    app = create_app(settings)
    print(f"swapyard: serving {settings.model_name} on http://{settings.host}:{settings.port}", flush=True)
    run_app(app, settings)
    return 0


def run_app(app: Any, settings: Settings) -> None:
    """Serve `app` (create_app's) with uvicorn until SIGINT/SIGTERM, draining in-flight requests first."""
    import uvicorn

    from server.shutdown import DrainingServer

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
