"""The embedded demos (`swapyard serve` without `--base-model`): tiny models, their data, and adapters built by
the trainer in a child process. Built on first run, offline and deterministic, then cached.

    chat        (default) demo/chat.py: a tiny Llama-style model and two LoRA adapters, `french` and `pirate`
    sentiment   demo/sentiment.py: a tiny BERT-style encoder and two classification adapters

The entry point (swapyard/serve_cli.py) resolves a demo into a base-model path and an adapter directory before
it starts the server, which knows nothing about the demo.
"""

from __future__ import annotations

import os

from .common import DEMO_MODEL_NAME, Demo


def prepare(kind: str | None, directory: str | os.PathLike[str] | None = None) -> tuple[Demo, str]:
    """(demo, served model name) of the demo `kind` ('chat' when None)."""
    if kind == "sentiment":
        from .sentiment import prepare_sentiment_demo

        return prepare_sentiment_demo(directory), DEMO_MODEL_NAME + "-sentiment"
    from .chat import prepare_demo

    return prepare_demo(directory), DEMO_MODEL_NAME


__all__ = ["Demo", "prepare"]
