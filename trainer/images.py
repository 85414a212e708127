"""Image data for `--task image-cls` and `--task semantic-seg` (PEFT's two vision guides).

Where the data comes from:

    image-cls     an image folder (ImageFolder layout: one subfolder per class, the class its name), or a
                  JSONL file of {"image": path, "label": class}
    semantic-seg  a JSONL file of {"image": path, "mask": path}; a mask is a PNG whose pixel values are label
                  ids (255 = ignore, as SegFormer's semantic_loss_ignore_index). Label names come from an
                  `id2label.json` next to the data file (as in the guide's dataset), else the ids themselves.

Relative paths in a JSONL file are relative to that file. Columns are renamed with --image-column,
--label-column and --mask-column. Every image goes through the base model's own image processor
(AutoImageProcessor: resize, rescale, normalise; masks resized by nearest neighbour), once, up front.

    image-cls     example = {"pixel_values": (3, H, W), "labels": class id}
    semantic-seg  example = {"pixel_values": (3, H, W), "labels": (H, W) label ids, -100 where ignored}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers import AutoImageProcessor

from .config import TrainConfig
from .data import build_label_maps, read_rows
from .errors import DataError, EmptyDataError, MissingColumnError, TrainConfigError, UnseenLabelError
from .features import IGNORE_INDEX, Example

IMAGE_TASKS = ("image-cls", "semantic-seg")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ID2LABEL_FILE = "id2label.json"


@dataclass
class ImageRecord:
    image: Path
    label: str | None = None  # image-cls: the class name
    mask: Path | None = None  # semantic-seg: the label-id PNG
    where: str = ""  # for messages: "file row N"


@dataclass
class ImageData:
    train: list[Example]
    eval: list[Example] | None
    label2id: dict[str, int]


def load_image_processor(cfg: TrainConfig) -> Any:
    try:
        return AutoImageProcessor.from_pretrained(cfg.base_model, revision=cfg.base_model_revision)
    except (OSError, ValueError) as exc:
        raise TrainConfigError(
            f"cannot load an image processor from {cfg.base_model!r}: {exc}. The base model directory needs "
            "its preprocessor_config.json (save it with the image processor's save_pretrained)."
        ) from exc


def read_image_records(path: str | Path, cfg: TrainConfig) -> list[ImageRecord]:
    """The examples of an image folder (image-cls) or a JSONL file (module docstring)."""
    p = Path(path)
    if p.is_dir():
        if cfg.task != "image-cls":
            raise DataError(
                f"{p} is a directory: image folders (one subfolder per class) are image-cls data; semantic-seg "
                "reads a JSONL file of {image, mask} paths."
            )
        records = [
            ImageRecord(image=f, label=cls.name, where=str(f))
            for cls in sorted(d for d in p.iterdir() if d.is_dir())
            for f in sorted(cls.iterdir())
            if f.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not records:
            raise EmptyDataError(
                f"{p} holds no images in class subfolders ({p}/<class>/<image>.png); the image-cls folder layout "
                "is one subfolder per class."
            )
        return records
    rows = read_rows(p)
    if not rows:
        raise EmptyDataError(f"{p} has no rows; a {cfg.task} run needs at least one example.")
    second = (
        ("label", cfg.label_column, "--label-column")
        if cfg.task == "image-cls"
        else (
            "mask",
            cfg.mask_column,
            "--mask-column",
        )
    )
    for role, name, flag in (("image", cfg.image_column, "--image-column"), second):
        if name not in rows[0]:
            raise MissingColumnError(
                f"{p}: column {name!r} ({cfg.task} {role}) not found; columns found: {list(rows[0])}. Set "
                f"{flag} to the column that holds the {role}s."
            )
    records = []
    for i, row in enumerate(rows, start=1):
        image, other = row.get(cfg.image_column), row.get(second[1])
        if not isinstance(image, str) or not image or other is None or other == "":
            raise DataError(
                f"{p} row {i}: {cfg.image_column!r} must be an image path and {second[1]!r} non-empty."
            )
        where = f"{p} row {i}"
        if cfg.task == "image-cls":
            label = str(int(other)) if isinstance(other, float) and other.is_integer() else str(other)
            records.append(ImageRecord(image=p.parent / image, label=label, where=where))
        else:
            records.append(ImageRecord(image=p.parent / image, mask=p.parent / str(other), where=where))
    return records


def _open(path: Path, where: str, mode: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except FileNotFoundError:
        raise DataError(f"{where}: image file {path} does not exist.") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{where}: {path} is not an image that can be decoded ({exc}).") from None


def _seg_labels(cfg: TrainConfig, records: list[ImageRecord], model_config: Any) -> dict[str, int]:
    """label name -> id for segmentation: the ids the masks use (0..max), named by id2label.json if present."""
    ids: set[int] = set()
    for rec in records:
        assert rec.mask is not None
        ids |= {int(v) for v in np.unique(np.asarray(_open(rec.mask, rec.where, "L")))}
    ignore = int(getattr(model_config, "semantic_loss_ignore_index", 255))
    ids.discard(ignore)
    if not ids:
        raise EmptyDataError(
            f"{cfg.train_file}: every mask pixel is the ignore index {ignore}; nothing to learn."
        )
    names_file = Path(cfg.train_file).parent / ID2LABEL_FILE
    names = (
        {int(k): str(v) for k, v in json.loads(names_file.read_text()).items()}
        if names_file.is_file()
        else {}
    )
    count = max(max(ids) + 1, len(names))
    return {names.get(i, str(i)): i for i in range(count)}


def featurize(
    records: Sequence[ImageRecord], processor: Any, cfg: TrainConfig, label2id: dict[str, int], ignore: int
) -> list[Example]:
    """Every record through the image processor (module docstring for the example layout)."""
    examples: list[Example] = []
    for rec in records:
        image = _open(rec.image, rec.where, "RGB")
        if cfg.task == "image-cls":
            assert rec.label is not None
            pixels = processor(images=[image], return_tensors="pt")["pixel_values"][0]
            examples.append({"pixel_values": pixels, "labels": label2id[rec.label]})
            continue
        assert rec.mask is not None
        mask = _open(rec.mask, rec.where, "L")
        out = processor(images=[image], segmentation_maps=[mask], return_tensors="pt")
        labels = out["labels"][0].long()  # (H, W)
        labels[labels == ignore] = IGNORE_INDEX
        if int(labels.max()) >= len(label2id):
            raise UnseenLabelError(
                f"{rec.where}: mask label {int(labels.max())} is not one of the training labels."
            )
        examples.append({"pixel_values": out["pixel_values"][0], "labels": labels})
    return examples


def prepare_image_data(cfg: TrainConfig, model_config: Any) -> ImageData:
    """Read, check and process the train (and eval) data; raises before any weights load."""
    train = read_image_records(cfg.train_file, cfg)
    evaluation = read_image_records(cfg.eval_file, cfg) if cfg.eval_file else None
    if cfg.task == "image-cls":
        label2id, _ = build_label_maps({r.label for r in train if r.label is not None})
        for rec in evaluation or []:
            if rec.label not in label2id:
                raise UnseenLabelError(
                    f"{rec.where}: label {rec.label!r} never appears in {cfg.train_file} (training labels: "
                    f"{sorted(label2id)}); the classifier cannot learn it."
                )
    else:
        label2id = _seg_labels(cfg, train, model_config)
    processor = load_image_processor(cfg)
    ignore = int(getattr(model_config, "semantic_loss_ignore_index", 255))
    return ImageData(
        train=featurize(train, processor, cfg, label2id, ignore),
        eval=featurize(evaluation, processor, cfg, label2id, ignore) if evaluation is not None else None,
        label2id=label2id,
    )


def collate_images(examples: Sequence[Example]) -> dict[str, torch.Tensor]:
    """`pixel_values` (B, 3, H, W) and `labels` (B,) or (B, H, W)."""
    labels = [ex["labels"] for ex in examples]
    return {
        "pixel_values": torch.stack([ex["pixel_values"] for ex in examples]),
        "labels": torch.stack(labels) if isinstance(labels[0], torch.Tensor) else torch.tensor(labels),
    }


def head_modules(model: Any) -> list[str]:
    """The task head(s) of an image model: its top-level children other than the backbone (ViT's
    `classifier`, SegFormer's `decode_head`), trained whole as modules_to_save, as in PEFT's guides."""
    backbone = getattr(model, "base_model_prefix", "")
    heads = [
        name
        for name, child in model.named_children()
        if name != backbone and next(child.parameters(), None) is not None
    ]
    if not heads:
        raise TrainConfigError(
            f"{type(model).__name__} has no head besides its backbone {backbone!r}; set modules_to_save in "
            "--method-config."
        )
    return heads
