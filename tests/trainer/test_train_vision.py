"""`swapyard train --task image-cls | semantic-seg` on tiny image bases and synthetic images (the vision
examples' generator): the output adapter is PEFT's layout, real PEFT loads it and gives the same logits as
Swapyard's serving form; bad inputs are refused before any weights load."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, AutoModelForSemanticSegmentation

from adapters_core.multi import MultiAdapterModel
from swapyard.train_cli import parse_config
from trainer.errors import DataError, IncompatibleMethodError
from trainer.run import train

REPO = Path(__file__).resolve().parents[2]


def _synthetic() -> Any:
    spec = importlib.util.spec_from_file_location("synthetic", REPO / "examples" / "vision" / "synthetic.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    synthetic = _synthetic()
    root = tmp_path_factory.mktemp("vision")
    return {
        "vit": synthetic.save_base("vit", root / "vit"),
        "segformer": synthetic.save_base("segformer", root / "segformer"),
        "shapes": synthetic.write_shape_folder(root / "shapes", per_class=4, seed=0),
        "scenes": synthetic.write_scenes(root / "scenes", n_train=6, n_eval=2, seed=1),
    }


def _train(args: list[str], out: Path) -> Any:
    cfg = parse_config([*args, "--output-dir", str(out), "--no-progress", "--batch-size", "4"], environ={})
    return train(cfg)


def _parity(base_cls: Any, base_dir: Path, out: Path, pixels: torch.Tensor, num_labels: int) -> None:
    """PEFT's PeftModel.from_pretrained on the output equals MultiAdapterModel's rows (and the base differs)."""
    labels = json.loads((out / "label_map.json").read_text())["id2label"]
    assert len(labels) == num_labels
    kwargs = {"num_labels": num_labels, "ignore_mismatched_sizes": True}
    oracle = peft.PeftModel.from_pretrained(base_cls.from_pretrained(base_dir, **kwargs), str(out)).eval()
    multi = MultiAdapterModel(base_cls.from_pretrained(base_dir))
    multi.add("trained", out)
    with torch.no_grad():
        want = oracle(pixel_values=pixels).logits
        got = multi.classify_images(pixels, ["trained", None, "trained"])
        base_rows = multi.classify_images(pixels, [None] * 3)
    for row in (0, 2):
        torch.testing.assert_close(got[row], want[row], atol=1e-5, rtol=1e-5)
        assert got[row].shape[0] == num_labels
    assert got[1].shape[0] == 3 and torch.equal(got[1], base_rows[1])
    assert float((want[0] - base_rows[0]).abs().max()) > 1e-4  # the trained adapter changes its rows


def test_image_cls_from_an_image_folder(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    lora = '{"target_modules": ["q_proj", "v_proj"], "r": 4}'
    result = _train(
        [
            "--base-model",
            str(data["vit"]),
            "--method",
            "lora",
            "--task",
            "image-cls",
            "--train-file",
            str(data["shapes"]),
            "--eval-file",
            str(data["shapes"]),
            "--method-config",
            lora,
            "--epochs",
            "2",
            "--lr",
            "5e-3",
        ],
        out,
    )
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["classifier"] and config["task_type"] is None
    assert result.metrics["final"]["eval_accuracy"] >= 0
    processor = AutoImageProcessor.from_pretrained(data["vit"])
    images = [Image.open(p).convert("RGB") for p in sorted(data["shapes"].glob("*/0.png"))]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    _parity(AutoModelForImageClassification, data["vit"], out, pixels, num_labels=3)
    assert json.loads((out / "label_map.json").read_text())["id2label"] == {
        "0": "blue",
        "1": "green",
        "2": "red",
    }


def test_semantic_seg_from_jsonl(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    _train(
        [
            "--base-model",
            str(data["segformer"]),
            "--method",
            "dora",
            "--task",
            "semantic-seg",
            "--train-file",
            str(data["scenes"] / "train.jsonl"),
            "--eval-file",
            str(data["scenes"] / "eval.jsonl"),
            "--method-config",
            '{"target_modules": ["q_proj", "v_proj"], "r": 4}',
            "--epochs",
            "1",
        ],
        out,
    )
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["decode_head"] and config["use_dora"]
    assert json.loads((out / "label_map.json").read_text())["id2label"] == {
        "0": "background",
        "1": "square",
        "2": "disc",
    }
    _parity(AutoModelForSemanticSegmentation, data["segformer"], out, torch.randn(3, 3, 32, 32), num_labels=3)


def test_image_tasks_refuse_what_cannot_work(data: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(IncompatibleMethodError, match="word embeddings"):
        _train(
            [
                "--base-model",
                str(data["vit"]),
                "--method",
                "prompt-tuning",
                "--task",
                "image-cls",
                "--train-file",
                str(data["shapes"]),
            ],
            tmp_path / "a",
        )
    with pytest.raises(DataError, match=r"image folders .* are image-cls data"):
        _train(
            [
                "--base-model",
                str(data["segformer"]),
                "--method",
                "lora",
                "--task",
                "semantic-seg",
                "--method-config",
                '{"target_modules": ["q_proj"]}',
                "--train-file",
                str(data["shapes"]),
            ],
            tmp_path / "b",
        )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "missing.png", "label": "red"}\n')
    with pytest.raises(DataError, match=r"missing\.png does not exist"):
        _train(
            [
                "--base-model",
                str(data["vit"]),
                "--method",
                "lora",
                "--task",
                "image-cls",
                "--method-config",
                '{"target_modules": ["q_proj"]}',
                "--train-file",
                str(bad),
            ],
            tmp_path / "c",
        )
    with pytest.raises(IncompatibleMethodError, match="no semantic-seg head"):
        _train(
            [
                "--base-model",
                str(data["vit"]),
                "--method",
                "lora",
                "--task",
                "semantic-seg",
                "--train-file",
                str(data["shapes"]),
            ],
            tmp_path / "d",
        )
