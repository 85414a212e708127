"""The `swapyard` entry point: it dispatches serve / train / bench, the packages below never reach back up or
across (not even through importlib), and serve and train get their flags from the one generator."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from server.settings import Settings
from server.settings import env_name as serve_env_name
from swapyard.cli import main
from swapyard.serve_cli import build_parser as serve_parser
from swapyard.train_cli import build_parser as train_parser
from trainer.config import TrainConfig
from trainer.config import env_name as train_env_name

ROOT = Path(__file__).resolve().parents[2]


def test_python_m_swapyard_is_the_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "swapyard", "--version"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == importlib.metadata.version("swapyard")


def test_bench_is_the_serving_benchmark(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: swapyard bench" in out and "--preset {cpu-small,micro,s-lora-7b}" in out


def test_an_unknown_command_is_an_argparse_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["srve"])
    assert exit_.value.code == 2
    assert "invalid choice: 'srve'" in capsys.readouterr().err


def test_no_command_prints_the_commands(capsys) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("serve", "train", "bench"))


def _dynamic_imports(package: str) -> list[str]:
    """`importlib.import_module(...)` / `__import__(...)` calls in a package: imports import-linter cannot see."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


@pytest.mark.parametrize("package", ["server", "trainer", "demo"])
def test_no_package_reaches_another_through_importlib(package: str) -> None:
    assert _dynamic_imports(package) == []


@pytest.mark.parametrize(
    ("parser", "model", "env_name"),
    [(serve_parser, Settings, serve_env_name), (train_parser, TrainConfig, train_env_name)],
)
def test_every_field_has_a_flag_with_its_env_variable(parser, model, env_name) -> None:
    actions = {a.dest: a for a in parser()._actions}
    for name, field in model.model_fields.items():
        assert name in actions, name
        assert actions[name].default is None  # only given flags override env / config file / defaults
        assert f"[env {env_name(name)}]" in actions[name].help
        assert field.description in actions[name].help
