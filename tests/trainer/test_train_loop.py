"""The loop and checkpoints on a plain transformers model (no adapter): the mechanics every method shares.

* an interrupted run resumed from its checkpoint ends bit-equal to an uninterrupted run (dropout on, so
  the RNG state must come back too);
* gradient accumulation: batch 4 equals 2 micro-batches of 2 (loss normalised by the step's target count).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import tiny_gpt2
from train_helpers import build_tokenizer, lm_rows
from transformers import get_linear_schedule_with_warmup

from trainer import checkpoint as ckpt
from trainer.data import Record
from trainer.distributed import DistContext
from trainer.features import Collator, tokenize_records
from trainer.loop import LoopCallbacks, LoopSetup, evaluate, train_loop

CTX = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _examples(n: int, seed: int):
    records = [Record(r, i) for i, r in enumerate(lm_rows(n, seed), start=1)]
    return tokenize_records(records, build_tokenizer(), "causal-lm", 32)[0]


def _model(dropout: float) -> torch.nn.Module:
    model = tiny_gpt2()
    model.transformer.drop.p = dropout  # dropout draws from the RNG: resume must restore it
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("transformer.h.1.")
    return model


def _run(
    out: Path,
    *,
    batch_size=4,
    accumulation=1,
    interrupt_at=None,
    resume=False,
    epochs=2,
    dropout=0.2,
    sgd=False,
):
    torch.manual_seed(0)
    model = _model(dropout)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    # AdamW divides by sqrt(v): float-rounding noise in near-zero gradients shows up as ~1e-6 in the weights.
    # SGD is linear in the gradient, so it checks the loss normalisation itself tightly.
    optimizer = (
        torch.optim.SGD(trainable.values(), lr=0.5) if sgd else torch.optim.AdamW(trainable.values(), lr=1e-3)
    )
    train = _examples(24, 0)
    setup = LoopSetup(
        task="causal-lm",
        train=train,
        eval=_examples(8, 1),
        collate=Collator(0, "causal-lm"),
        batch_size=batch_size,
        eval_batch_size=8,
        accumulation=accumulation,
        epochs=epochs,
        seed=7,
        max_grad_norm=1.0,
        bf16=False,
        save_steps=2,
        progress=False,
    )
    total = epochs * -(-24 // (batch_size * accumulation))
    scheduler = get_linear_schedule_with_warmup(optimizer, 2, total)
    state = ckpt.TrainState()
    if resume:
        saved = ckpt.load_checkpoint(ckpt.resolve_resume_path("latest", out))
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(saved.trainable[n])
        optimizer.load_state_dict(saved.optimizer)
        scheduler.load_state_dict(saved.scheduler)
        ckpt.set_rng_state(saved.rng[0])
        state = saved.state

    def save(st, rng):
        ckpt.save_checkpoint(
            out,
            trainable=trainable,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            rng=[rng],
            extra={},
            state=st,
            fingerprint={},
        )

    def stop(st):
        if st.global_step == interrupt_at:
            raise KeyboardInterrupt

    callbacks = LoopCallbacks(save_checkpoint=save, save_best=lambda st: None, on_step_end=stop)
    state = train_loop(model, optimizer, scheduler, setup, state, CTX, callbacks)
    return {n: p.detach().clone() for n, p in trainable.items()}, state


def test_resume_after_interrupt_is_bit_equal(tmp_path):
    full, full_state = _run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", interrupt_at=3)  # mid-epoch (6 steps per epoch), not a save_steps multiple
    assert ckpt.list_checkpoints(tmp_path / "cut")[-1].name == "step-3"
    resumed, resumed_state = _run(tmp_path / "cut", resume=True)
    for name in full:
        assert torch.equal(full[name], resumed[name]), name
    assert resumed_state.history == full_state.history
    assert full_state.global_step == 12 and [h["epoch"] for h in full_state.history] == [1, 2]
    assert full_state.history[-1]["eval_loss"] < full_state.initial_eval["eval_loss"]


def test_gradient_accumulation_matches_a_big_batch(tmp_path):
    big, _ = _run(tmp_path / "a", batch_size=4, accumulation=1, epochs=1, dropout=0.0, sgd=True)
    acc, _ = _run(tmp_path / "b", batch_size=2, accumulation=2, epochs=1, dropout=0.0, sgd=True)
    start = {n: p.detach() for n, p in _model(0.0).named_parameters() if n in big}
    for name in big:
        assert not torch.equal(big[name], start[name])  # it did train
        torch.testing.assert_close(big[name], acc[name], atol=1e-6, rtol=0)


def test_pruning_keeps_newest(tmp_path):
    for step in (2, 4, 10):
        ckpt.save_checkpoint(
            tmp_path,
            trainable={"w": torch.ones(1)},
            optimizer={},
            scheduler={},
            rng=[ckpt.rng_state()],
            extra={},
            state=ckpt.TrainState(global_step=step),
            fingerprint={"a": 1},
        )
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-4", "step-10"]
    saved = ckpt.load_checkpoint(ckpt.resolve_resume_path("latest", tmp_path))
    assert saved.state.global_step == 10
    with pytest.raises(ckpt.CheckpointError, match="different run"):
        ckpt.check_fingerprint(saved.fingerprint, {"a": 2}, "x")
    with pytest.raises(ckpt.CheckpointError, match="not a complete training checkpoint"):
        ckpt.load_checkpoint(tmp_path)


def test_evaluate_reports_accuracy_for_classification():
    from tiny_models import tiny_bert

    model = tiny_bert(num_labels=2)
    examples = [{"input_ids": [5, 6, 7], "labels": 1}, {"input_ids": [8, 9], "labels": 0}]
    setup = LoopSetup(
        task="seq-cls",
        train=examples,
        eval=examples,
        collate=Collator(0, "seq-cls"),
        batch_size=2,
        eval_batch_size=1,
        accumulation=1,
        epochs=1,
        seed=0,
        max_grad_norm=0,
        bf16=False,
        save_steps=None,
        progress=False,
    )
    metrics = evaluate(model, setup, CTX)
    assert set(metrics) == {"eval_loss", "eval_accuracy"} and 0 <= metrics["eval_accuracy"] <= 1
