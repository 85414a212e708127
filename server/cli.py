"""The `swapyard` command line."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swapyard", description="Serve one frozen base model with many PEFT adapters."
    )
    parser.add_argument("--version", action="version", version=importlib.metadata.version("swapyard"))
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("train", help="train a PEFT-format adapter (swapyard train --help)", add_help=False)
    commands.add_parser(
        "serve", help="serve a base model and its adapters over HTTP (swapyard serve --help)", add_help=False
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        # The trainer parses its own flags; imported lazily because server never depends on trainer.
        return int(importlib.import_module("trainer.cli").main(argv[1:]))
    if argv[:1] == ["serve"]:
        from .serve_cli import main as serve_main

        return serve_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0
