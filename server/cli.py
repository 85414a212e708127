"""The `swapyard` command line."""

from __future__ import annotations

import argparse
import importlib.metadata


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swapyard", description="Serve one frozen base model with many PEFT adapters."
    )
    parser.add_argument("--version", action="version", version=importlib.metadata.version("swapyard"))
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0
