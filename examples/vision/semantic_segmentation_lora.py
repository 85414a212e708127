"""PEFT's "Semantic segmentation using LoRA" guide, on Swapyard, offline, in about a minute on a CPU.

The guide fine-tunes SegFormer on SceneParse150 with LoRA on the attention's query and value projections
and the whole decode head trained (modules_to_save=["decode_head"]), then segments images with it. Here the
base is a tiny random SegFormer and the data small synthetic scenes — a red square and a blue disc on a noisy
background, with their masks (synthetic.py) — so it runs anywhere:

    python examples/vision/semantic_segmentation_lora.py [--work-dir runs/vision-seg] [--epochs 12]

1. `swapyard train --task semantic-seg --method lora` on a JSONL of {image, mask} paths (+ id2label.json)
2. `swapyard serve --base-model <the SegFormer> --adapter scenes=<the trained adapter>`
3. `POST /segment` with the eval images, base64 in JSON; each answer is the image's label map as a PNG of
   the image's own size, with the adapter's label names

The last line printed is a JSON summary: images, pixel accuracy against the masks, the label names.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import image_base64, png_from_base64, post_json, swapyard_serve, swapyard_train
from synthetic import save_base, write_scenes


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("runs/vision-seg"))
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args(argv)
    work: Path = args.work_dir
    base = save_base("segformer", work / "base")
    scenes = write_scenes(work / "scenes", n_train=32, n_eval=6, seed=0)

    adapter = work / "adapter"
    swapyard_train(
        [
            "--base-model", str(base),
            "--task", "semantic-seg",
            "--method", "lora",
            # The guide's LoRA: r=32, alpha=32 on query and value (q_proj/v_proj in transformers 5), dropout
            # 0.1, bias "lora_only"; the trainer puts the decode head in modules_to_save.
            "--method-config",
            '{"r": 32, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.1, "bias": "lora_only"}',
            "--train-file", str(scenes / "train.jsonl"),
            "--eval-file", str(scenes / "eval.jsonl"),
            "--epochs", str(args.epochs),
            "--batch-size", "8",
            "--lr", "1e-2",
            "--output-dir", str(adapter),
            "--overwrite",
        ]
    )  # fmt: skip

    rows = [json.loads(line) for line in (scenes / "eval.jsonl").read_text().splitlines()]
    images = [scenes / r["image"] for r in rows]
    with swapyard_serve(
        ["--base-model", str(base), "--adapter", f"scenes={adapter}"], work / "serve.log"
    ) as url:
        answers = post_json(
            f"{url}/segment",
            {"inputs": [image_base64(p) for p in images], "parameters": {"adapter_id": "scenes"}},
        )
    hits = total = 0
    for row, answer in zip(rows, answers):
        predicted = np.asarray(png_from_base64(answer["label_map"]))  # (H, W) label ids
        truth = np.asarray(Image.open(scenes / row["mask"]))
        hits += int((predicted == truth).sum())
        total += truth.size
        found = {answer["labels"][i]: int((predicted == i).sum()) for i in np.unique(predicted)}
        print(f"{row['image']}: {answer['width']}×{answer['height']} pixels by label {found}")
    summary = {"images": len(rows), "pixel_accuracy": hits / total, "labels": answers[0]["labels"]}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
