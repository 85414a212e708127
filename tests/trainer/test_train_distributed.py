"""torchrun with two gloo processes gives the same adapter as one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from trainer.config import TrainConfig
from trainer.run import train

REPO = Path(__file__).resolve().parents[2]


def test_two_gloo_processes_match_one_process(bases, task_data, tmp_path):
    train_file, eval_file = task_data["causal-lm"]
    common = {
        "base_model": str(bases["llama"]),
        "method": "lora",
        "task": "causal-lm",
        "train_file": str(train_file),
        "eval_file": str(eval_file),
        "num_epochs": 2,
        "learning_rate": 2e-2,
        "seed": 5,
        "progress": False,
        "device": "cpu",
    }
    # One process: micro-batch 8. Two processes: micro-batch 2 x 2 accumulation steps x 2 ranks = 8.
    single = train(TrainConfig(**common, output_dir=str(tmp_path / "one"), batch_size=8))
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in common.items() if k != "progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "swapyard",
            "train",
            *argv,
            "--no-progress",
            "--output-dir",
            str(tmp_path / "two"),
            "--batch-size",
            "2",
            "--gradient-accumulation-steps",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("adapter written to") == 1  # only rank 0 reports (and writes)
    one, two = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("one", "two"))
    assert one.keys() == two.keys()
    for key in one:
        # Same gradients up to float summation order; AdamW turns that into ~1e-6 differences.
        torch.testing.assert_close(two[key], one[key], atol=2e-5, rtol=0)
    metrics = single.metrics["final"]
    assert metrics["world_size"] == 1 and metrics["global_step"] == 16
