from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import clean_env, save_base, write_task_data


@pytest.fixture(scope="session")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny base model directories (model + tokenizer), built once per session on first use."""
    root = tmp_path_factory.mktemp("bases")
    cache: dict[str, Path] = {}

    class Lazy(dict):
        def __missing__(self, kind: str) -> Path:
            cache[kind] = save_base(kind, root / kind)
            self[kind] = cache[kind]
            return cache[kind]

    return Lazy()


@pytest.fixture(scope="session")
def task_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """(train, eval) JSONL files of each synthetic task."""
    root = tmp_path_factory.mktemp("data")
    return {task: write_task_data(root, task) for task in ("causal-lm", "seq2seq-lm", "seq-cls", "token-cls")}


@pytest.fixture(autouse=True)
def _no_swapyard_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)
