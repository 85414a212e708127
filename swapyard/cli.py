"""The `swapyard` command line: one entry point that dispatches to the packages.

    swapyard serve ...   server/ (swapyard serve --help)
    swapyard train ...   trainer/ (swapyard train --help)
    swapyard bench ...   bench/serving/ (swapyard bench --help): the serving benchmark

Each command parses its own flags (swapyard/flags.py generates them from the settings models), so this module
only picks the command; the packages below never import each other or this one.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swapyard", description="Serve one frozen base model with many PEFT adapters."
    )
    parser.add_argument("--version", action="version", version=importlib.metadata.version("swapyard"))
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "serve", help="serve a base model and its adapters over HTTP (swapyard serve --help)", add_help=False
    )
    commands.add_parser("train", help="train a PEFT-format adapter (swapyard train --help)", add_help=False)
    commands.add_parser(
        "bench",
        help="serving benchmark: many adapters vs base-only, merged and PEFT (swapyard bench --help)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `swapyard`; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command, rest = (argv[0], argv[1:]) if argv else (None, [])
    if command == "serve":
        from .serve_cli import main as serve_main

        return serve_main(rest)
    if command == "train":
        from .train_cli import main as train_main

        return train_main(rest)
    if command == "bench":
        try:
            from bench.serving.cli import main as bench_main
        except ImportError as exc:  # an install without the source checkout's bench/ or its extras
            print(
                f"swapyard bench: the benchmark cannot be imported here ({exc}); run it from a source "
                "checkout after `pip install -e '.[bench]'`",
                file=sys.stderr,
            )
            return 2
        return bench_main(rest)
    parser = build_parser()
    parser.parse_args(argv)  # --version, --help, or an unknown command (argparse's error, exit 2)
    parser.print_help()
    return 0
