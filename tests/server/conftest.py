"""Shared fixtures of the API tests: tiny bases with PEFT-made adapters (built once per session), and a
factory for the real app running in process (TestClient runs the lifespan: model load, engine thread)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serve_helpers import make_causal_adapters, make_cls_adapters, make_t5_adapter, save_base

from server.app import create_app
from server.settings import Settings


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_base("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def causal_adapters(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_causal_adapters(llama_dir, tmp_path_factory.mktemp("causal-adapters"))


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_base("bert", tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def cls_adapters(
    bert_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, list[str]]]:
    return make_cls_adapters(bert_dir, tmp_path_factory.mktemp("cls-adapters"))


@pytest.fixture(scope="session")
def t5_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = save_base("t5", tmp_path_factory.mktemp("t5"))
    return base, make_t5_adapter(base, tmp_path_factory.mktemp("t5-adapters"))


AppFactory = Callable[..., Any]


@pytest.fixture
def serve() -> AppFactory:
    """`with serve(base_model=..., adapters=[...], **limits) as client:` — the real app, in process."""

    @contextmanager
    def _serve(**settings: Any) -> Iterator[TestClient]:
        app = create_app(Settings(**settings))
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client

    return _serve
