"""What both demos share: where they are cached, what a finished build looks like, how they run the trainer.

The trainer runs as a child process (`python -m swapyard train --config FILE`): nothing in `demo/` imports the
trainer or the server, so the demo sits beside them in the layering (.importlinter).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

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
