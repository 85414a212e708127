"""The training loop: one readable function, torchtune style, no framework.

    for each epoch:                      data order = f(seed, epoch)   (DistributedSampler, even on 1 process)
        for each optimizer step:         `gradient_accumulation_steps` micro-batches per rank
            loss = Σ CE / (#targets of the whole global step)    -> exact gradient accumulation and DDP
            backward; clip; AdamW step; method hook (AdaLoRA budget); LR schedule step
        evaluate (loss, perplexity / accuracy), keep the best adapter, checkpoint

Normalising by the target count of the *global* step (all micro-batches, all ranks) makes the gradient
identical however a global batch is split over accumulation steps and processes, up to float rounding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from .checkpoint import TrainState, rng_state
from .distributed import DistContext, all_reduce_sum
from .features import IGNORE_INDEX, Example, count_targets

Batch = dict[str, torch.Tensor]


@dataclass
class MethodHooks:
    """Method-specific steps the loop calls (AdaLoRA's orthogonality loss and rank-budget update)."""

    extra_loss: Callable[[nn.Module], torch.Tensor | None] = lambda model: None
    after_optimizer_step: Callable[[nn.Module, int], None] = lambda model, step: None


@dataclass
class LoopSetup:
    """What the loop needs besides the model; built by `trainer.run`."""

    task: str
    train: Sequence[Example]
    eval: Sequence[Example] | None
    collate: Callable[[Sequence[Example]], Batch]
    batch_size: int
    eval_batch_size: int
    accumulation: int
    epochs: int
    seed: int
    max_grad_norm: float
    bf16: bool
    save_steps: int | None
    progress: bool
    hooks: MethodHooks = field(default_factory=MethodHooks)


@dataclass
class LoopCallbacks:
    """Side effects the loop triggers but does not own (files are written by rank 0 only)."""

    save_checkpoint: Callable[[TrainState, dict[str, Any]], None]  # (state, this rank's RNG state)
    save_best: Callable[[TrainState], None]
    on_step_end: Callable[[TrainState], None] | None = None


def steps_per_epoch(n_examples: int, batch_size: int, accumulation: int, world_size: int) -> int:
    """Optimizer steps per epoch: ceil(ceil(per-rank examples / batch) / accumulation)."""
    per_rank = math.ceil(n_examples / world_size)
    return math.ceil(math.ceil(per_rank / batch_size) / accumulation)


def forward_loss(model: nn.Module, batch: Batch, task: str) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the batch's targets, and how many targets were predicted right.

    Prompt-tuning and P-tuning prepend virtual positions to the logits of causal LMs and token
    classifiers (PEFT's layout), so the logits are aligned to the labels from the right.
    """
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if task == "seq2seq-lm":
        inputs["labels"] = labels  # the model shifts labels right into decoder_input_ids
    logits = model(**inputs).logits
    if task in ("seq-cls", "image-cls"):
        targets = labels  # (B,)
    elif task == "semantic-seg":  # (B, C, h, w) logits at a fraction of the (B, H, W) labels' size
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        logits, targets = logits.permute(0, 2, 3, 1), labels  # (B, H, W, C): one target per pixel
    else:
        logits = logits if task == "seq2seq-lm" else logits[:, -labels.shape[1] :]  # (B, T, V)
        targets = labels
        if task == "causal-lm":
            logits, targets = logits[:, :-1], labels[:, 1:]  # position t predicts token t+1
    flat = logits.reshape(-1, logits.shape[-1]).float()
    flat_targets = targets.reshape(-1)
    ce = F.cross_entropy(flat, flat_targets, ignore_index=IGNORE_INDEX, reduction="sum")
    correct = int(((flat.argmax(-1) == flat_targets) & (flat_targets != IGNORE_INDEX)).sum())
    return ce, correct


def _tokens(batch: Batch) -> int:
    """Input tokens of a batch (images count as one each), for the throughput shown."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["labels"].shape[0])


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) for k, v in batch.items()}


def _autocast(ctx: DistContext, bf16: bool):
    if bf16 and ctx.device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, setup: LoopSetup, ctx: DistContext) -> dict[str, float]:
    """Per-target mean loss over the eval set, with perplexity (LM tasks) or accuracy (classification).

    Each rank takes every `world_size`-th example (no padding duplicates) and the sums are all-reduced.
    """
    assert setup.eval is not None
    was_training = model.training
    model.eval()
    shard = list(range(ctx.rank, len(setup.eval), ctx.world_size))
    ce_sum, targets, correct = 0.0, 0.0, 0.0
    for start in range(0, len(shard), setup.eval_batch_size):
        batch = setup.collate([setup.eval[i] for i in shard[start : start + setup.eval_batch_size]])
        batch = _to(batch, ctx.device)
        with _autocast(ctx, setup.bf16):
            ce, ok = forward_loss(model, batch, setup.task)
        ce_sum += float(ce)
        targets += count_targets(batch, setup.task)
        correct += ok
    ce_sum, targets, correct = all_reduce_sum([ce_sum, targets, correct], ctx)
    model.train(was_training)
    loss = ce_sum / max(targets, 1.0)
    metrics = {"eval_loss": loss}
    if setup.task in ("causal-lm", "seq2seq-lm"):
        metrics["eval_perplexity"] = math.exp(min(loss, 50.0))
        metrics["eval_token_accuracy"] = correct / max(targets, 1.0)
    else:
        metrics["eval_accuracy"] = correct / max(targets, 1.0)
    return metrics


def train_loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    setup: LoopSetup,
    state: TrainState,
    ctx: DistContext,
    callbacks: LoopCallbacks,
) -> TrainState:
    """Train from `state.global_step` to the end; `model` may be wrapped in DistributedDataParallel."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    per_epoch = steps_per_epoch(len(setup.train), setup.batch_size, setup.accumulation, ctx.world_size)
    total = per_epoch * setup.epochs
    # Even on one process: the data order is then a function of (seed, epoch) only, and DDP ranks take
    # interleaved slices of the same permutation, so 1 x batch 8 and 2 x batch 4 see the same examples.
    sampler: DistributedSampler[int] = DistributedSampler(
        range(len(setup.train)),  # type: ignore[arg-type]  # a sized sequence of indices is all it needs
        num_replicas=ctx.world_size,
        rank=ctx.rank,
        shuffle=True,
        seed=setup.seed,
    )
    if setup.eval is not None and state.global_step == 0 and state.initial_eval is None:
        state.initial_eval = evaluate(model, setup, ctx)
    bar = tqdm(
        total=total, initial=state.global_step, disable=not (ctx.is_main and setup.progress), unit="step"
    )
    rng_at_last_step = rng_state()  # what an interrupt checkpoint restores (partial steps are redone)
    model.train()
    try:
        if state.global_step // per_epoch > state.epochs_completed:
            # Resumed from a mid-run checkpoint taken at an epoch's last step, before its evaluation.
            _end_epoch(model, setup, state, ctx, state.epochs_completed, scheduler, callbacks)
        for epoch in range(state.global_step // per_epoch, setup.epochs):
            sampler.set_epoch(epoch)
            order = list(sampler)
            micro = [order[i : i + setup.batch_size] for i in range(0, len(order), setup.batch_size)]
            windows = [micro[i : i + setup.accumulation] for i in range(0, len(micro), setup.accumulation)]
            for window in windows[state.global_step - epoch * per_epoch :]:
                t0 = time.perf_counter()
                batches = [_to(setup.collate([setup.train[i] for i in idx]), ctx.device) for idx in window]
                local_targets = sum(count_targets(b, setup.task) for b in batches)
                local_tokens = sum(_tokens(b) for b in batches)
                global_targets, global_tokens = all_reduce_sum([local_targets, local_tokens], ctx)
                step_ce = 0.0
                for j, batch in enumerate(batches):
                    # DDP averages gradients over ranks; scaling by world_size turns that into the global sum.
                    last = j == len(batches) - 1
                    sync = nullcontext() if last or not ctx.distributed else model.no_sync()  # type: ignore[operator]
                    with sync, _autocast(ctx, setup.bf16):
                        ce, _ = forward_loss(model, batch, setup.task)
                        loss = ce * ctx.world_size / max(global_targets, 1.0)
                        extra = setup.hooks.extra_loss(model)
                        if extra is not None:
                            loss = loss + extra / len(batches)
                    loss.backward()
                    step_ce += float(ce.detach())
                if setup.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(trainable, setup.max_grad_norm)
                optimizer.step()
                state.global_step += 1
                setup.hooks.after_optimizer_step(
                    model, state.global_step
                )  # needs the grads: before zero_grad
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

                (step_ce,) = all_reduce_sum([step_ce], ctx)
                state.epoch_loss_sum += step_ce
                state.epoch_targets += global_targets
                rng_at_last_step = rng_state()
                elapsed = max(time.perf_counter() - t0, 1e-9)
                bar.update(1)
                bar.set_postfix(
                    epoch=epoch + 1,
                    loss=f"{step_ce / max(global_targets, 1.0):.4f}",
                    lr=f"{scheduler.get_last_lr()[0]:.2e}",
                    tok_s=f"{global_tokens / elapsed:,.0f}",
                )
                if setup.save_steps and state.global_step % setup.save_steps == 0:
                    callbacks.save_checkpoint(state, rng_at_last_step)
                if callbacks.on_step_end is not None:
                    callbacks.on_step_end(state)
            _end_epoch(model, setup, state, ctx, epoch, scheduler, callbacks)
    except KeyboardInterrupt:
        # Parameters and optimizer only change at whole steps, so the last step is a consistent state.
        # Not under torchrun: the other ranks are being stopped too, so a collective save would hang.
        if state.global_step > 0 and not ctx.distributed:
            callbacks.save_checkpoint(state, rng_at_last_step)
        raise
    finally:
        bar.close()
    return state


def _end_epoch(
    model: nn.Module,
    setup: LoopSetup,
    state: TrainState,
    ctx: DistContext,
    epoch: int,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    callbacks: LoopCallbacks,
) -> None:
    """Record the epoch's metrics, keep the best adapter, write a checkpoint."""
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "step": state.global_step,
        "train_loss": state.epoch_loss_sum / max(state.epoch_targets, 1.0),
        "learning_rate": scheduler.get_last_lr()[0],
    }
    if setup.eval is not None:
        record.update(evaluate(model, setup, ctx))
        if state.best_eval_loss is None or record["eval_loss"] < state.best_eval_loss:
            state.best_eval_loss, state.best_epoch = record["eval_loss"], epoch + 1
            callbacks.save_best(state)
    state.history.append(record)
    state.epoch_loss_sum, state.epoch_targets = 0.0, 0.0
    state.epochs_completed = epoch + 1
    if ctx.is_main:
        tqdm.write(
            " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        )
    callbacks.save_checkpoint(state, rng_state())
