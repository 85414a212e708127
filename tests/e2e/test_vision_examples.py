"""The two vision guides under examples/vision run end to end as a user runs them: synthetic images,
`swapyard train` (a real process), `swapyard serve` (a real process), then /classify or /segment over HTTP.

Fewer epochs than the examples' defaults keep each under a minute of CPU; the answers must still show that the
served adapter learned its task (well above chance), with its own label names. Seeds are fixed: the outcome
does not depend on timing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "vision"


def _example(name: str) -> Any:
    sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_image_classification_guide(tmp_path: Path) -> None:
    summary = _example("image_classification_lora").main(["--work-dir", str(tmp_path), "--epochs", "3"])
    assert summary["images"] == 12
    assert summary["labels"] == ["blue", "green", "red"]  # the adapter's classes, from its label map
    assert summary["accuracy"] >= 0.75  # chance is 1/3


def test_semantic_segmentation_guide(tmp_path: Path) -> None:
    summary = _example("semantic_segmentation_lora").main(["--work-dir", str(tmp_path), "--epochs", "4"])
    assert summary["images"] == 6
    assert summary["labels"] == ["background", "square", "disc"]  # from the data's id2label.json
    assert summary["pixel_accuracy"] >= 0.85  # the background alone is ~70% of the pixels
