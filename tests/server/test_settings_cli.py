"""`swapyard serve` flags and `SWAPYARD_*` variables resolve into Settings (flag > env > default)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from server.settings import Settings
from swapyard.serve_cli import parse_settings


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
        [
            sys.executable,
            "-c",
            "import sys, server.app; print(any(m in sys.modules for m in ('trainer', 'demo', 'swapyard')))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == "False", out.stderr
    help_text = subprocess.run(
        [sys.executable, "-c", "from swapyard.cli import main; main(['serve', '--help'])"],
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


def test_help_shows_defaults_and_the_queue_limit_as_the_engine_counts_it(capsys) -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "requests waiting to start (running ones not counted); more -> 429 (default: 256)" in help_text
    assert "waiting + running" not in help_text
    for shown in ("(default: 8080)", "(default: 127.0.0.1)", "(default: 30.0)", "(default: true)"):
        assert shown in help_text, shown


def test_a_missing_adapter_root_is_a_startup_error(tmp_path, capsys) -> None:
    from swapyard.serve_cli import main

    missing = tmp_path / "nowhere"
    with pytest.raises(ValidationError, match="--adapter-root"):
        parse_settings(["--base-model", "m", "--adapter-root", str(missing)])
    assert main(["--base-model", "m", "--adapter-root", str(missing)]) == 2
    assert "--adapter-root" in capsys.readouterr().err
    assert parse_settings(["--base-model", "m", "--adapter-root", str(tmp_path)]).adapter_root == str(
        tmp_path
    )


def test_uvicorn_gets_the_keep_alive_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow client is bounded twice: idle keep-alive connections close (uvicorn), and a body that stalls
    gets a 408 (--request-read-timeout-s, tested in test_api_hardening.py)."""
    from server import shutdown
    from swapyard import serve_cli

    configs = []
    monkeypatch.setattr(shutdown.DrainingServer, "run", lambda self: configs.append(self.config))
    argv = ["--base-model", "m", "--keep-alive-timeout-s", "7", "--request-read-timeout-s", "2.5"]
    assert serve_cli.main(argv) == 0
    assert configs[0].timeout_keep_alive == 7
    assert configs[0].app.state.swapyard.settings.request_read_timeout_s == 2.5
