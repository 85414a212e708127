"""Fixtures of the deploy tests: a tiny served base with a few real-PEFT adapters (tests/server helpers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_helpers import ADAPTERS  # first: it puts serve_helpers on the path
from serve_helpers import make_causal_adapters, save_base


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_base("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def adapter_dir(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("adapters")
    make_causal_adapters(llama_dir, out, names=ADAPTERS)
    return out
