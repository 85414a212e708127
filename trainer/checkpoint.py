"""Training checkpoints: everything needed to continue a run as if it had never stopped.

A checkpoint directory `output_dir/checkpoints/step-<N>/` holds

    trainable.safetensors   every trainable parameter, by its name in the adapter model (this includes
                            what PEFT's file cannot hold: P-tuning's MLP/LSTM, prefix projections)
    optimizer.pt            AdamW state
    scheduler.pt            LR scheduler state
    rng.pt                  per-rank RNG states (torch CPU, CUDA, python `random`)
    extra.pt                method state outside parameters (AdaLoRA's rank pattern and importance EMAs)
    trainer_state.json      step, running epoch loss, per-epoch history, best eval loss, fingerprint

The data order is a pure function of (seed, epoch), so step N plus these files determine the rest of the
run. Files are written into a temporary directory that is renamed into place, so an interrupted save
never leaves a half checkpoint that `--resume-from-checkpoint latest` would pick.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import CheckpointError

CHECKPOINTS_DIR = "checkpoints"
_TRAINABLE = "trainable.safetensors"
_OPTIMIZER = "optimizer.pt"
_SCHEDULER = "scheduler.pt"
_RNG = "rng.pt"
_EXTRA = "extra.pt"
_STATE = "trainer_state.json"


@dataclass
class TrainState:
    """Progress of a run; saved in every checkpoint and summarised in metrics.json."""

    global_step: int = 0
    epoch_loss_sum: float = 0.0  # CE summed over the targets of the current epoch so far
    epoch_targets: float = 0.0
    epochs_completed: int = 0  # epochs whose evaluation and bookkeeping have run
    history: list[dict[str, Any]] = field(default_factory=list)
    initial_eval: dict[str, float] | None = None
    best_eval_loss: float | None = None
    best_epoch: int | None = None


@dataclass
class Checkpoint:
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: list[dict[str, Any]]
    extra: dict[str, Any]
    state: TrainState
    fingerprint: dict[str, Any]


def rng_state() -> dict[str, Any]:
    """This process's RNG states (dropout and any sampling draw from them)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def save_checkpoint(
    output_dir: str | Path,
    *,
    trainable: Mapping[str, torch.Tensor],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    rng: Sequence[Any],
    extra: dict[str, Any],
    state: TrainState,
    fingerprint: dict[str, Any],
) -> Path:
    """Write `output_dir/checkpoints/step-<global_step>` atomically and return its path."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    final = root / f"step-{state.global_step}"
    tmp = root / f".tmp-step-{state.global_step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / _TRAINABLE))
    torch.save(optimizer, tmp / _OPTIMIZER)
    torch.save(scheduler, tmp / _SCHEDULER)
    torch.save(list(rng), tmp / _RNG)
    torch.save(extra, tmp / _EXTRA)
    (tmp / _STATE).write_text(
        json.dumps({"state": asdict(state), "fingerprint": fingerprint}, indent=2), encoding="utf-8"
    )
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`; tensors only (`weights_only=True`), never pickles."""
    p = Path(path)
    missing = [n for n in (_TRAINABLE, _OPTIMIZER, _SCHEDULER, _RNG, _EXTRA, _STATE) if not (p / n).is_file()]
    if missing:
        raise CheckpointError(
            f"{p} is not a complete training checkpoint (missing {missing}); point "
            "--resume-from-checkpoint at a checkpoints/step-N directory or use 'latest'."
        )
    meta = json.loads((p / _STATE).read_text(encoding="utf-8"))
    return Checkpoint(
        trainable=load_file(str(p / _TRAINABLE)),
        optimizer=torch.load(p / _OPTIMIZER, weights_only=True),
        scheduler=torch.load(p / _SCHEDULER, weights_only=True),
        rng=torch.load(p / _RNG, weights_only=True),
        extra=torch.load(p / _EXTRA, weights_only=True),
        state=TrainState(**meta["state"]),
        fingerprint=meta["fingerprint"],
    )


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of `output_dir`, oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if d.is_dir() and d.name.startswith("step-") and d.name[5:].isdigit()]
    return sorted(found, key=lambda d: int(d.name[5:]))


def resolve_resume_path(spec: str, output_dir: str | Path) -> Path:
    """`latest` -> the newest checkpoint in `output_dir`; otherwise the given directory."""
    if spec == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise CheckpointError(
                f"--resume-from-checkpoint latest: {Path(output_dir) / CHECKPOINTS_DIR} holds no checkpoint."
            )
        return found[-1]
    path = Path(spec)
    if not path.is_dir():
        raise CheckpointError(f"--resume-from-checkpoint {spec}: no such directory.")
    return path


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], path: str | Path) -> None:
    """Refuse to resume a checkpoint of another model, method, data size or global batch."""
    diffs = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if diffs:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diffs.items())
        raise CheckpointError(
            f"{path} was written by a different run ({lines}); resume with the same base model, method, "
            "data and global batch size, or start afresh with --overwrite."
        )
