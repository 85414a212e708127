"""What both demos share: where they are cached, what a finished build looks like, how they run the trainer.

The trainer runs as a child process (`python -m swapyard train --config FILE`): nothing in `demo/` imports the
trainer or the server, so the demo sits beside them in the layering (.importlinter).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEMO_VERSION = "demo-v1"
DEMO_MODEL_NAME = "swapyard-demo"
READY_FILE = "READY"


@dataclass
class Demo:
    base_dir: Path
    adapter_dir: Path


def default_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "swapyard" / DEMO_VERSION


def run_trainer(config: dict) -> None:
    """Run `swapyard train --config FILE` in a child process (the demo runs the trainer, never imports it)."""
    config_file = Path(config["output_dir"]).with_suffix(".train.json")
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(json.dumps(config), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "swapyard", "train", "--config", str(config_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"training the demo adapter {config['output_dir']} failed:\n{done.stderr[-2000:]}")


def train_lora(
    rows: list[dict[str, Any]],
    *,
    base_dir: Path,
    data_dir: Path,
    out: Path,
    seed: int,
    task: str,
    target_modules: list[str],
) -> None:
    """Train one demo LoRA adapter on `rows` (shuffled with `seed`, written as `data_dir/<out name>.jsonl`)
    with `swapyard train` in a child process: the recipe both demos' adapters share."""
    data_dir.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    train_file = data_dir / f"{out.name}.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run_trainer(
        {
            "base_model": str(base_dir),
            "method": "lora",
            "method_config": {"r": 8, "lora_alpha": 16, "target_modules": target_modules},
            "task": task,
            "train_file": str(train_file),
            "output_dir": str(out),
            "learning_rate": 5e-3,
            "num_epochs": 20,
            "batch_size": 16,
            "seed": seed,
            "device": "cpu",
            "progress": False,
        }
    )
