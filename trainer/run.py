"""`train(config)`: the Python API behind `swapyard train`.

    check output dir -> read + check data -> read base config, check method fits -> tokenize
    -> seed, load base, wrap with get_adapter_model -> (resume) -> [DDP] -> loop -> write outputs

Everything that can be wrong with the inputs is raised before the base model's weights are loaded.
Output directory:

    adapter_config.json, adapter_model.safetensors   the adapter (PEFT layout); the best epoch's when an
                                                      eval file is given and keep_best is on
    metrics.json          initial eval, per-epoch and final metrics
    train_config.yaml     the resolved config (every default filled in)
    label_map.json        classification only: label2id / id2label of the trained head
    best/                 the best epoch's adapter (with an eval file)
    checkpoints/step-N/   training state to resume from
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from transformers import get_linear_schedule_with_warmup, set_seed

from adapters_core import get_adapter_model

from . import checkpoint as ckpt
from .config import TrainConfig
from .data import build_label_maps, check_eval_labels, label_set, load_records
from .distributed import DistContext, barrier, gather_objects, init_distributed, shutdown
from .errors import CheckpointError, OutputDirExistsError
from .features import Collator, TokenizeStats, tokenize_records
from .hooks import method_hooks
from .images import IMAGE_TASKS, collate_images, head_modules, prepare_image_data
from .loop import LoopCallbacks, LoopSetup, steps_per_epoch, train_loop
from .methods import build_adapter_config, check_fit
from .modeling import accepts_token_type_ids, load_base_model, load_model_config, load_tokenizer

BEST_DIR = "best"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, Any]
    is_main: bool = True  # False on torchrun ranks other than 0 (they wrote nothing)


def train(cfg: TrainConfig, *, on_step_end: Callable[[ckpt.TrainState], None] | None = None) -> TrainResult:
    """Train one adapter as `cfg` says and write the output directory (rank 0 only writes)."""
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, ctx, on_step_end)
    finally:
        shutdown(ctx)


def check_output_dir(cfg: TrainConfig) -> None:
    """Refuse to write into a non-empty directory unless told to overwrite or resume."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise OutputDirExistsError(f"--output-dir {out} is a file, not a directory.")
    if out.is_dir() and any(out.iterdir()) and not (cfg.overwrite or cfg.resume_from_checkpoint):
        raise OutputDirExistsError(
            f"--output-dir {out} is not empty; training would overwrite it. Pass --overwrite to replace its "
            "contents, --resume-from-checkpoint latest to continue the run in it, or choose another directory."
        )


def _train(
    cfg: TrainConfig, ctx: DistContext, on_step_end: Callable[[ckpt.TrainState], None] | None
) -> TrainResult:
    started = time.perf_counter()
    out = Path(cfg.output_dir)
    check_output_dir(cfg)
    resume = ckpt.resolve_resume_path(cfg.resume_from_checkpoint, out) if cfg.resume_from_checkpoint else None

    # -- data and fit checks (no weights loaded yet) --------------------------------------------------
    label2id: dict[str, int] | None
    image_collate: Callable[[Any], dict[str, torch.Tensor]] | None = None
    pad_token_id = None
    if cfg.task in IMAGE_TASKS:
        train_ex, eval_ex, label2id, stats, image_collate = _image_data(cfg)
    else:
        train_ex, eval_ex, label2id, stats, tokenizer = _text_data(cfg)
        pad_token_id = tokenizer.pad_token_id
    per_epoch = steps_per_epoch(
        len(train_ex), cfg.batch_size, cfg.gradient_accumulation_steps, ctx.world_size
    )
    total_steps = per_epoch * cfg.num_epochs
    adapter_config = build_adapter_config(cfg, load_model_config(cfg), total_steps=total_steps)
    if ctx.is_main and (stats.truncated or stats.no_target):
        print(
            f"note: {stats.truncated} training examples truncated to {cfg.max_length} tokens, "
            f"{stats.no_target} dropped (no target token left)"
        )

    # -- model ---------------------------------------------------------------------------------------
    if ctx.is_main and cfg.overwrite:
        for stale in (out / ckpt.CHECKPOINTS_DIR, out / BEST_DIR):
            shutil.rmtree(stale, ignore_errors=True)
    barrier(ctx)
    set_seed(cfg.seed)
    base = load_base_model(cfg, label2id, pad_token_id)
    if cfg.task in IMAGE_TASKS and not getattr(adapter_config, "modules_to_save", None):
        # The new head trains whole (PEFT's guides); LoRA/IA3 configs (prompt methods were refused) have the field.
        adapter_config.modules_to_save = head_modules(base)  # type: ignore[attr-defined]
    model = get_adapter_model(base, adapter_config)
    model.to(ctx.device)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    hooks = method_hooks(model)
    fingerprint = {
        "base_model": cfg.base_model,
        "method": cfg.method,
        "task": cfg.task,
        "train_examples": len(train_ex),
        "global_batch": cfg.batch_size * cfg.gradient_accumulation_steps * ctx.world_size,
        "steps_per_epoch": per_epoch,
        "trainable": sorted(trainable),
    }
    state = ckpt.TrainState()
    if resume is not None:
        state = _restore(resume, trainable, optimizer, scheduler, hooks, fingerprint, ctx)

    train_model: torch.nn.Module = model
    if ctx.distributed:
        train_model = DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )

    def save_checkpoint(st: ckpt.TrainState, rng: dict[str, Any]) -> None:
        rngs = gather_objects(rng, ctx)  # collective: every rank gets here
        if ctx.is_main:
            ckpt.save_checkpoint(
                out,
                trainable=trainable,
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                rng=rngs,
                extra=hooks.state_dict(),
                state=st,
                fingerprint=fingerprint,
            )
            ckpt.prune_checkpoints(out, cfg.save_total_limit)

    def save_best(st: ckpt.TrainState) -> None:
        if ctx.is_main:
            model.save_pretrained(str(out / BEST_DIR))

    setup = LoopSetup(
        task=cfg.task,
        train=train_ex,
        eval=eval_ex,
        collate=image_collate
        or Collator(int(pad_token_id or 0), cfg.task, token_type_ids=accepts_token_type_ids(base)),
        batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size or cfg.batch_size,
        accumulation=cfg.gradient_accumulation_steps,
        epochs=cfg.num_epochs,
        seed=cfg.seed,
        max_grad_norm=cfg.max_grad_norm,
        bf16=cfg.bf16,
        save_steps=cfg.save_steps,
        progress=cfg.progress,
        hooks=hooks.loop_hooks(),
    )
    state = train_loop(
        train_model,
        optimizer,
        scheduler,
        setup,
        state,
        ctx,
        LoopCallbacks(save_checkpoint, save_best, on_step_end),
    )

    metrics = _metrics(state, train_ex, eval_ex, started, ctx)
    if ctx.is_main:
        _write_outputs(cfg, model, state, metrics, label2id, out)
    barrier(ctx)
    return TrainResult(out, metrics, ctx.is_main)


def _text_data(cfg: TrainConfig) -> tuple[list, list | None, dict[str, int] | None, TokenizeStats, Any]:
    """Read, check and tokenize the text data: (train, eval, label2id, stats, tokenizer)."""
    train_records = load_records(cfg.train_file, cfg)
    eval_records = load_records(cfg.eval_file, cfg) if cfg.eval_file else None
    label2id: dict[str, int] | None = None
    if cfg.task in ("seq-cls", "token-cls"):
        label2id, _ = build_label_maps(label_set(train_records, cfg.task))
        if eval_records is not None:
            check_eval_labels(train_records, eval_records, cfg)
    check_fit(cfg, load_model_config(cfg))
    tokenizer = load_tokenizer(cfg)
    train_ex, stats = tokenize_records(
        train_records, tokenizer, cfg.task, cfg.max_length, label2id, source=cfg.train_file
    )
    eval_ex = None
    if eval_records is not None:
        eval_ex, _ = tokenize_records(
            eval_records, tokenizer, cfg.task, cfg.max_length, label2id, source=str(cfg.eval_file)
        )
    return train_ex, eval_ex, label2id, stats, tokenizer


def _image_data(cfg: TrainConfig) -> tuple[list, list | None, dict[str, int] | None, TokenizeStats, Any]:
    """Check the fit, read and process the image data (trainer/images.py): (train, eval, label2id, stats,
    collate)."""
    model_config = load_model_config(cfg)
    check_fit(cfg, model_config)
    data = prepare_image_data(cfg, model_config)
    return data.train, data.eval, data.label2id, TokenizeStats(), collate_images


def _restore(
    path: Path,
    trainable: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    hooks: Any,
    fingerprint: dict[str, Any],
    ctx: DistContext,
) -> ckpt.TrainState:
    """Load a checkpoint into the freshly built model, optimizer and scheduler; set this rank's RNG."""
    saved = ckpt.load_checkpoint(path)
    ckpt.check_fingerprint(saved.fingerprint, fingerprint, path)
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(saved.trainable[name].to(param.device, param.dtype))
    optimizer.load_state_dict(saved.optimizer)
    scheduler.load_state_dict(saved.scheduler)
    hooks.load_state_dict(saved.extra)
    if len(saved.rng) != ctx.world_size:
        raise CheckpointError(
            f"{path} holds RNG states of {len(saved.rng)} processes, this run has {ctx.world_size}."
        )
    ckpt.set_rng_state(saved.rng[ctx.rank])
    return saved.state


def _metrics(
    state: ckpt.TrainState, train_ex: list, eval_ex: list | None, started: float, ctx: DistContext
) -> dict[str, Any]:
    final = dict(state.history[-1]) if state.history else {}
    final.update(
        train_runtime_s=time.perf_counter() - started,
        global_step=state.global_step,
        train_examples=len(train_ex),
        eval_examples=len(eval_ex or []),
        world_size=ctx.world_size,
    )
    return {
        "initial": state.initial_eval,
        "final": final,
        "best": {"epoch": state.best_epoch, "eval_loss": state.best_eval_loss} if state.best_epoch else None,
        "epochs": state.history,
    }


def _write_outputs(
    cfg: TrainConfig,
    model: Any,
    state: ckpt.TrainState,
    metrics: dict[str, Any],
    label2id: dict[str, int] | None,
    out: Path,
) -> None:
    """Adapter (best epoch's or last), metrics.json, train_config.yaml, label_map.json; optional Hub push."""
    out.mkdir(parents=True, exist_ok=True)
    best = out / BEST_DIR
    if cfg.keep_best and state.best_epoch is not None and (best / ADAPTER_FILES[1]).is_file():
        for name in ADAPTER_FILES:
            shutil.copy2(best / name, out / name)
    else:
        model.save_pretrained(str(out))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    (out / "train_config.yaml").write_text(yaml.safe_dump(cfg.resolved(), sort_keys=False), encoding="utf-8")
    if label2id is not None:
        id2label = {str(i): lab for lab, i in label2id.items()}
        (out / "label_map.json").write_text(
            json.dumps({"label2id": label2id, "id2label": id2label}, indent=2), encoding="utf-8"
        )
    if cfg.push_to_hub:
        from .hub import push_output_dir

        assert cfg.hub_model_id is not None
        push_output_dir(out, cfg.hub_model_id, private=cfg.hub_private)
