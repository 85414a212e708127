"""Small synthetic image data sets and tiny image bases for the vision examples (no downloads).

    python examples/vision/synthetic.py runs/vision-data     # writes everything below into that directory

* `bases/vit`, `bases/segformer`: tiny random ViT / SegFormer saved with their image processors
  (adapters_core/tiny.py), what `--base-model` points at.
* `shapes/train/<colour>/*.png`, `shapes/eval/...`: an image folder (ImageFolder layout) for image-cls: one filled
  shape per image, its class the shape's colour (red, green, blue), on a noisy grey background.
* `scenes/train.jsonl`, `scenes/eval.jsonl`, `scenes/id2label.json`: semantic-seg data: a red square and a blue
  disc on a noisy background, each image with its mask (0 background, 1 square, 2 disc).

Colours and shapes are what makes the tasks learnable in a few epochs on a tiny random base.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from adapters_core.tiny import tiny_image_processor, tiny_model

SIZE = 48  # the images' side (the bases' processors resize to 32)
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 70, 220)}
SEG_LABELS = {0: "background", 1: "square", 2: "disc"}


def save_base(kind: str, out_dir: Path) -> Path:
    """A tiny random `kind` base ("vit" or "segformer") and its image processor, saved to `out_dir`."""
    tiny_model(kind).save_pretrained(out_dir)  # type: ignore[arg-type]
    tiny_image_processor(kind).save_pretrained(out_dir)  # type: ignore[arg-type]
    return out_dir


def _background(rng: np.random.Generator) -> Image.Image:
    noise = rng.normal(128, 20, (SIZE, SIZE, 3)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(noise)


def _box(rng: np.random.Generator) -> tuple[int, int, int, int]:
    side = int(rng.integers(14, 26))
    x, y = (int(v) for v in rng.integers(0, SIZE - side, 2))
    return x, y, x + side, y + side


def shape_image(colour: str, rng: np.random.Generator) -> Image.Image:
    """One filled square or disc of `colour` at a random place and size."""
    image = _background(rng)
    draw = ImageDraw.Draw(image)
    (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(_box(rng), fill=COLOURS[colour])
    return image


def write_shape_folder(root: Path, per_class: int, seed: int) -> Path:
    """An ImageFolder: `root/<colour>/<i>.png`."""
    rng = np.random.default_rng(seed)
    for colour in COLOURS:
        (root / colour).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape_image(colour, rng).save(root / colour / f"{i}.png")
    return root


def scene(rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """An image with a red square and a blue disc, and its (H, W) mask of label ids."""
    image = _background(rng)
    mask = Image.new("L", (SIZE, SIZE), 0)
    for label, colour, fill in ((1, "red", "rectangle"), (2, "blue", "ellipse")):
        box = _box(rng)
        getattr(ImageDraw.Draw(image), fill)(box, fill=COLOURS[colour])
        getattr(ImageDraw.Draw(mask), fill)(box, fill=label)
    return image, mask


def write_scenes(root: Path, n_train: int, n_eval: int, seed: int) -> Path:
    """`root/{train,eval}.jsonl` of {"image", "mask"} paths (relative to root) and `root/id2label.json`."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n_train), ("eval", n_eval)):
        rows = []
        for i in range(count):
            image, mask = scene(rng)
            image.save(root / "images" / f"{split}-{i}.png")
            mask.save(root / "images" / f"{split}-{i}-mask.png")
            rows.append({"image": f"images/{split}-{i}.png", "mask": f"images/{split}-{i}-mask.png"})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "id2label.json").write_text(json.dumps({str(k): v for k, v in SEG_LABELS.items()}))
    return root


def write_all(root: Path, seed: int = 0) -> dict[str, Path]:
    """Everything the two vision examples need, under `root` (module docstring)."""
    return {
        "vit": save_base("vit", root / "bases" / "vit"),
        "segformer": save_base("segformer", root / "bases" / "segformer"),
        "shapes_train": write_shape_folder(root / "shapes" / "train", per_class=16, seed=seed),
        "shapes_eval": write_shape_folder(root / "shapes" / "eval", per_class=4, seed=seed + 1),
        "scenes": write_scenes(root / "scenes", n_train=24, n_eval=6, seed=seed + 2),
    }


if __name__ == "__main__":
    for name, path in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/vision-data")).items():
        print(f"{name}: {path}")
