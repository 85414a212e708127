"""Shared fixtures of the benchmark's tests: the micro preset's files, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.serving import fixtures as fx
from bench.serving.presets import PRESETS


@pytest.fixture(scope="session")
def micro_files(tmp_path_factory: pytest.TempPathFactory) -> fx.Fixtures:
    preset = PRESETS["micro"]
    root: Path = tmp_path_factory.mktemp("bench-micro")
    return fx.prepare(root, preset.base, preset.adapter_spec())
