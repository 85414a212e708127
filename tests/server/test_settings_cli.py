"""`swapyard serve` flags and `SWAPYARD_*` variables resolve into Settings (flag > env > default)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from server.serve_cli import parse_settings
from server.settings import Settings


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWAPYARD_PORT", "9001")
    monkeypatch.setenv("SWAPYARD_MAX_BATCH_SIZE", "3")
    monkeypatch.setenv("SWAPYARD_ADAPTERS", "a=./x, b=org/y")
    settings = parse_settings(["--base-model", "m", "--port", "9002", "--adapter", "c=./z"])
    assert settings.port == 9002 and settings.max_batch_size == 3
    assert settings.adapter_pairs() == [("c", "./z")]
    assert parse_settings(["--base-model", "m"]).adapter_pairs() == [("a", "./x"), ("b", "org/y")]
    assert parse_settings(["--demo"]).demo == "chat"
    assert parse_settings(["--demo", "sentiment"]).demo == "sentiment"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValidationError, match="NAME=SOURCE"):
        Settings(adapters=["no-equals-sign"])
    with pytest.raises(ValidationError, match="max_input_tokens"):
        Settings(max_input_tokens=100, max_total_tokens=50)


def test_serve_never_imports_the_trainer() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys, server.app, server.serve_cli; print('trainer' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == "False", out.stderr
    help_text = subprocess.run(
        [sys.executable, "-c", "from server.cli import main; main(['serve', '--help'])"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    for flag in (
        "--base-model",
        "--adapter NAME=SOURCE",
        "--adapter-dir",
        "--max-queued-requests",
        "SWAPYARD_PORT",
    ):
        assert flag in help_text
