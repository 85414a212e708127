"""AdaLoRA's rank-budget allocator and orthogonality loss match PEFT 0.21.2 step for step.

PEFT and Swapyard train side by side on the tiny llama: same initial adapter weights (PEFT's, copied into
ours), same batches, same AdamW, `update_and_allocate(step)` after every optimizer step. The masks
(`rank_pattern`), every adapter tensor (E included), the loss with its orthogonality term and the saved
adapter must agree; a checkpoint/resume of the allocator must reproduce the uninterrupted run.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from safetensors.torch import load_file
from tiny_models import VOCAB, perturb_adapter_weights, tiny_llama

import adapters_core
from adapters_core.adapter_model import get_adapter_model
from adapters_core.errors import UnsupportedError

pytestmark = pytest.mark.filterwarnings("ignore")

STEPS = 12
# 4 modules x init_r 6 = 24 triplets -> target 4 x 3 = 12; cubic schedule over steps 3..9, final mask at 9.
SCHEDULE: dict[str, Any] = {
    "init_r": 6,
    "target_r": 3,
    "lora_alpha": 12,
    "total_step": STEPS,
    "tinit": 2,
    "tfinal": 3,
    "deltaT": 2,
    "beta1": 0.85,
    "beta2": 0.85,
    "orth_reg_weight": 0.5,
    "target_modules": ["q_proj", "v_proj"],
    "task_type": "CAUSAL_LM",
}


def _batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(3, VOCAB, (4, 10), generator=g)  # (B, T) token ids, also the labels


def _lora(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def _peft_model() -> Any:
    model = peft.get_peft_model(tiny_llama(), peft.AdaLoraConfig(**SCHEDULE))
    perturb_adapter_weights(model, seed=3, scale=0.1)  # E starts at 0 in PEFT: give every score a signal
    return model


def _ours_like(reference: Any) -> Any:
    model = get_adapter_model(tiny_llama(), adapters_core.AdaLoraConfig(**SCHEDULE))
    ours, theirs = _lora(model), _lora(reference)
    assert ours.keys() == theirs.keys()
    with torch.no_grad():
        for name, p in ours.items():
            p.copy_(theirs[name])
    return model


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)


def _train(model: Any, optimizer: torch.optim.Optimizer, steps: range) -> list[float]:
    """PEFT's documented loop; returns the loss (cross-entropy + orthogonality term) of each step."""
    model.train()
    losses = []
    for step in steps:
        ids = _batch(step)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
        losses.append(float(loss))
    return losses


@dataclass
class SideBySide:
    theirs: Any
    ours: Any
    losses: list[tuple[float, float]] = field(default_factory=list)
    patterns: list[tuple[Any, Any]] = field(default_factory=list)
    max_param_diff: list[float] = field(default_factory=list)


@pytest.fixture(scope="module")
def side_by_side() -> SideBySide:
    theirs = _peft_model()
    run = SideBySide(theirs, _ours_like(theirs))
    opt_theirs, opt_ours = _optimizer(run.theirs), _optimizer(run.ours)
    for step in range(1, STEPS + 1):
        (a,) = _train(run.theirs, opt_theirs, range(step, step + 1))
        (b,) = _train(run.ours, opt_ours, range(step, step + 1))
        run.losses.append((a, b))
        run.patterns.append(
            (run.theirs.peft_config["default"].rank_pattern, run.ours.peft_config["default"].rank_pattern)
        )
        t, o = _lora(run.theirs), _lora(run.ours)
        run.max_param_diff.append(max(float((t[n] - o[n]).abs().max()) for n in t))
    return run


def test_masks_and_weights_match_peft_at_every_step(side_by_side: SideBySide) -> None:
    for step, ((theirs, ours), diff) in enumerate(
        zip(side_by_side.patterns, side_by_side.max_param_diff, strict=True), start=1
    ):
        assert ours == theirs, f"step {step}: rank_pattern differs"
        assert diff <= 1e-6, f"step {step}: adapter tensors differ by {diff}"
    final = side_by_side.patterns[-1][1]  # as recorded (saving strips the adapter name from the keys)
    assert sum(map(sum, final.values())) == SCHEDULE["target_r"] * 4  # the budget: target_r x modules
    assert len({sum(mask) for mask in final.values()}) > 1, "expected an uneven allocation"
    for name, p in _lora(side_by_side.ours).items():  # masked singular values stay exactly zero
        if "lora_E" in name:
            mask = torch.tensor(final[name.removeprefix("base_model.model.")])
            assert bool((p.view(-1)[~mask] == 0).all())


def test_loss_with_orthogonality_term_matches_peft(side_by_side: SideBySide) -> None:
    for theirs, ours in side_by_side.losses:
        assert abs(theirs - ours) <= 1e-6


def test_orthogonal_loss_equals_peft_term() -> None:
    theirs = _peft_model()
    ours = _ours_like(theirs)
    ids = _batch(0)
    with torch.no_grad():
        peft_term = (
            theirs(input_ids=ids, labels=ids).loss - theirs.get_base_model()(input_ids=ids, labels=ids).loss
        )
        our_term = ours.base_model.orthogonal_loss()
        our_loss = ours(input_ids=ids, labels=ids).loss
    assert float(peft_term) > 0.1
    assert abs(float(our_term) - float(peft_term)) <= 1e-5
    assert abs(float(our_loss) - float(theirs(input_ids=ids, labels=ids).loss)) <= 1e-6


def test_saved_adapter_equals_peft(side_by_side: SideBySide, tmp_path: Path) -> None:
    side_by_side.theirs.save_pretrained(str(tmp_path / "theirs"))
    side_by_side.ours.save_pretrained(str(tmp_path / "ours"))
    theirs = load_file(str(tmp_path / "theirs" / "adapter_model.safetensors"))
    ours = load_file(str(tmp_path / "ours" / "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key].shape == value.shape, key
        assert float((ours[key] - value).abs().max()) <= 1e-5, key
    assert any(v.shape[0] < SCHEDULE["init_r"] for k, v in ours.items() if k.endswith("lora_E"))
    pattern = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["rank_pattern"]
    assert pattern == json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())["rank_pattern"]
    assert all(".default" not in k for k in pattern)


def _snapshot(model: Any, optimizer: torch.optim.Optimizer) -> bytes:
    """What a trainer checkpoint holds, through torch.save(weights_only-loadable) and back."""
    buffer = io.BytesIO()
    torch.save(
        {
            "weights": {n: p.detach().clone() for n, p in _lora(model).items()},
            "optimizer": optimizer.state_dict(),
            "allocator": model.base_model.rankallocator.state_dict(),
        },
        buffer,
    )
    return buffer.getvalue()


@pytest.mark.parametrize("cut", [4, 9, 10])  # mid-schedule, at the final mask, after it
def test_resume_from_allocator_state_equals_uninterrupted(cut: int) -> None:
    reference = _peft_model()
    full = _ours_like(reference)
    _train(full, _optimizer(full), range(1, STEPS + 1))

    first = _ours_like(reference)
    opt_first = _optimizer(first)
    _train(first, opt_first, range(1, cut + 1))
    saved = torch.load(io.BytesIO(_snapshot(first, opt_first)), weights_only=True)

    resumed = _ours_like(_peft_model())  # fresh model: rank_pattern null, EMAs empty
    with torch.no_grad():
        for name, p in _lora(resumed).items():
            p.copy_(saved["weights"][name])
    opt_resumed = _optimizer(resumed)
    opt_resumed.load_state_dict(saved["optimizer"])
    resumed.base_model.rankallocator.load_state_dict(saved["allocator"])
    _train(resumed, opt_resumed, range(cut + 1, STEPS + 1))

    assert resumed.peft_config["default"].rank_pattern == full.peft_config["default"].rank_pattern
    expected = _lora(full)
    for name, p in _lora(resumed).items():
        assert torch.equal(p, expected[name]), name


def test_update_and_allocate_needs_a_trainable_adapter() -> None:
    config = adapters_core.AdaLoraConfig(**{**SCHEDULE, "inference_mode": True})
    model = get_adapter_model(tiny_llama(), config)
    assert model.base_model.rankallocator is None
    with pytest.raises(UnsupportedError, match="trainable"):
        model.base_model.update_and_allocate(1)
