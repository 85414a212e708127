"""adapters_core/sampling.py: the one sampler (library `generate` and the server's rows) against transformers'
processors, and its float64 numerics at extreme but valid parameters."""

from __future__ import annotations

import pytest
import torch
from tiny_models import BUILDERS, batch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from adapters_core import PromptTuningConfig, get_adapter_model
from adapters_core.sampling import draw, penalize, seen_mask, usable_rows, warp

LOGITS = torch.randn(4, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 4  # (B, V)
IDS = torch.randint(0, 64, (4, 7), generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(1.0, None, None), (0.7, 5, None), (1.3, None, 0.8), (0.5, 10, 0.6)]
)
def test_warp_gives_transformers_distribution(temperature, top_k, top_p):
    theirs = TemperatureLogitsWarper(temperature)(IDS, LOGITS.clone())
    if top_k is not None:
        theirs = TopKLogitsWarper(top_k)(IDS, theirs)
    if top_p is not None:
        theirs = TopPLogitsWarper(top_p)(IDS, theirs)
    ours = warp(LOGITS, temperature, top_k, top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))  # the same tokens kept
    torch.testing.assert_close(ours.softmax(-1), theirs.softmax(-1), rtol=1e-12, atol=1e-15)
    assert (ours.amax(-1) == 0).all()


def test_penalize_is_transformers_repetition_penalty():
    theirs = RepetitionPenaltyLogitsProcessor(1.7)(IDS, LOGITS.clone())
    assert torch.equal(penalize(LOGITS, seen_mask(IDS, 64), 1.7), theirs)


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-45])
def test_a_tiny_temperature_is_the_argmax_never_nan(temperature):
    scores = warp(LOGITS, temperature)
    assert not torch.isnan(scores).any()
    for seed in range(5):
        assert torch.equal(draw(scores, torch.Generator().manual_seed(seed)), LOGITS.argmax(-1))


def test_a_tiny_top_p_keeps_the_best_token_only():
    scores = warp(LOGITS, top_p=1e-300)
    assert torch.equal(torch.isfinite(scores).sum(-1), torch.ones(4, dtype=torch.long))


def test_usable_rows_refuse_nan_and_pos_inf_but_not_masked_tokens():
    rows = torch.tensor([[0.0, float("-inf")], [float("nan"), 0.0], [float("inf"), 0.0], [float("-inf")] * 2])
    assert usable_rows(rows).tolist() == [True, False, False, False]


def test_library_generate_at_a_tiny_temperature_equals_greedy():
    """transformers' float32 warper divides by 1e-300 → inf/nan → multinomial fails; ours samples the argmax."""
    model = get_adapter_model(
        BUILDERS["llama"](), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    model.eval()
    inputs = batch("llama")
    greedy = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    tiny = model.generate(
        **inputs,
        max_new_tokens=6,
        do_sample=True,
        temperature=1e-300,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(tiny, greedy)
