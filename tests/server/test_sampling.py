"""The per-row sampler and stop-sequence trimming, as plain functions."""

from __future__ import annotations

import math

import pytest
import torch

from server.errors import InvalidInputError
from server.generation import StopTrimmer, trim_at_stop
from server.sampling import NonFiniteScoresError, Pick, RowSampler, SamplingParams, choose_tokens


def _tokens(samplers: list[RowSampler], logits: torch.Tensor) -> list[int]:
    picks = choose_tokens(samplers, logits)
    assert all(isinstance(p, Pick) for p in picks), picks
    return [p.token_id for p in picks if isinstance(p, Pick)]


def test_greedy_rows_take_argmax_and_logprobs() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    samplers = [RowSampler(SamplingParams(), [0]) for _ in range(2)]
    picks = choose_tokens(samplers, logits)
    assert [p.token_id for p in picks if isinstance(p, Pick)] == [1, 0]
    assert isinstance(picks[0], Pick)
    assert abs(picks[0].logprob - float(torch.log_softmax(logits[0], -1)[1])) < 1e-6


def test_seeded_rows_do_not_depend_on_the_batch() -> None:
    params = SamplingParams(do_sample=True, temperature=0.8, top_k=5, top_p=0.9, seed=7)
    row = torch.randn(50, generator=torch.Generator().manual_seed(0))
    alone = RowSampler(params, [])
    in_batch = RowSampler(params, [])
    other = RowSampler(SamplingParams(do_sample=True, seed=99), [])
    a = [_tokens([alone], row[None])[0] for _ in range(20)]
    b = [_tokens([other, in_batch], torch.stack([row * 2, row]))[1] for _ in range(20)]
    assert a == b


def test_top_k_and_top_p_restrict_the_support() -> None:
    logits = torch.tensor([5.0, 4.0, 0.0, -1.0])
    top_k = RowSampler(SamplingParams(do_sample=True, top_k=2, seed=0), [])
    assert {top_k.choose(logits) for _ in range(50)} <= {0, 1}
    top_p = RowSampler(SamplingParams(do_sample=True, top_p=0.5, seed=0), [])
    assert {top_p.choose(logits) for _ in range(50)} == {0}


def test_repetition_penalty_discourages_seen_tokens() -> None:
    logits = torch.tensor([2.0, 1.9, -1.0])
    sampler = RowSampler(SamplingParams(repetition_penalty=2.0), prompt_ids=[0])
    assert sampler.choose(logits) == 1


def test_warpers_turn_sampling_on_like_tgi() -> None:
    assert SamplingParams.from_request(
        do_sample=False, temperature=0.5, top_k=None, top_p=None, repetition_penalty=None, seed=None
    ).do_sample
    assert not SamplingParams.from_request(
        do_sample=False, temperature=None, top_k=None, top_p=None, repetition_penalty=1.2, seed=None
    ).do_sample


# Extreme but valid parameters (issue 12): each is computed exactly, never nan, never a different answer.
LOGITS = torch.randn(64, generator=torch.Generator().manual_seed(3)) * 4  # (V,) one row, no ties


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-45, 1e-8])
def test_a_tiny_temperature_samples_the_argmax(temperature: float) -> None:
    for seed in range(20):
        sampler = RowSampler(SamplingParams(do_sample=True, temperature=temperature, seed=seed), [])
        assert sampler.choose(LOGITS) == int(LOGITS.argmax())


@pytest.mark.parametrize("top_p", [1e-300, 5e-324, 1e-9])
def test_a_tiny_top_p_keeps_only_the_best_token(top_p: float) -> None:
    for seed in range(20):
        sampler = RowSampler(SamplingParams(do_sample=True, top_p=top_p, seed=seed), [])
        assert sampler.choose(LOGITS) == int(LOGITS.argmax())


def test_a_huge_temperature_samples_nearly_uniformly() -> None:
    sampler = RowSampler(SamplingParams(do_sample=True, temperature=1e300, seed=0), [])
    seen = {sampler.choose(LOGITS) for _ in range(400)}
    assert len(seen) > 40  # of 64 tokens; at temperature 1 a few tokens take almost all the mass


def test_masked_tokens_are_never_sampled_even_at_extreme_settings() -> None:
    logits = LOGITS.clone()
    best = int(logits.argmax())
    logits[torch.arange(64) % 2 == 0] = float("-inf")  # the model masks half the vocabulary
    logits[best] = float("-inf")
    allowed = {i for i in range(64) if i % 2 == 1 and i != best}
    for temperature in (1e-300, 1.0, 1e300):
        sampler = RowSampler(SamplingParams(do_sample=True, temperature=temperature, top_p=0.9, seed=1), [])
        assert {sampler.choose(logits) for _ in range(50)} <= allowed


def test_a_row_without_finite_scores_fails_alone() -> None:
    nan_row = LOGITS.clone()
    nan_row[5] = float("nan")
    masked = torch.full((64,), float("-inf"))
    logits = torch.stack([nan_row, LOGITS, masked, LOGITS])
    samplers = [
        RowSampler(SamplingParams(), []),
        RowSampler(SamplingParams(), []),
        RowSampler(SamplingParams(do_sample=True, seed=0), []),
        RowSampler(SamplingParams(do_sample=True, temperature=1e-300, seed=0), []),
    ]
    picks = choose_tokens(samplers, logits)
    assert isinstance(picks[0], NonFiniteScoresError) and isinstance(picks[2], NonFiniteScoresError)
    assert picks[1] == Pick(int(LOGITS.argmax()), pytest.approx(float(LOGITS.log_softmax(-1).max())))
    assert isinstance(picks[3], Pick) and picks[3].token_id == int(LOGITS.argmax())


def test_a_penalty_that_overflows_every_score_is_an_error_naming_it() -> None:
    negative = -LOGITS.abs() - 1  # every score negative: the penalty multiplies each
    everything = list(range(64))
    huge = RowSampler(SamplingParams(repetition_penalty=1.7e308), everything)
    picks = choose_tokens([huge, RowSampler(SamplingParams(), [])], torch.stack([negative, negative]))
    assert isinstance(picks[0], InvalidInputError) and "repetition_penalty" in str(picks[0])
    assert picks[1] == Pick(int(negative.argmax()), pytest.approx(float(negative.log_softmax(-1).max())))


@pytest.mark.parametrize(
    "params",
    [
        dict(temperature=0.0),
        dict(temperature=math.nan),
        dict(temperature=math.inf),
        dict(top_p=0.0),
        dict(top_p=math.nan),
        dict(repetition_penalty=math.inf),
        dict(top_k=0),
    ],
)
def test_params_that_are_not_numbers_are_refused(params: dict) -> None:
    with pytest.raises(InvalidInputError, match=next(iter(params))):
        SamplingParams(do_sample=True, **params)


def test_stop_trimmer_never_shows_a_stop() -> None:
    trimmer = StopTrimmer(["END"])
    pieces = ["hel", "lo E", "N", "D more"]
    out = "".join(trimmer.push(p) for p in pieces) + trimmer.finish()
    assert out == "hello "
    assert trim_at_stop("a STOP b", ["STOP", "b"]) == "a "
    plain = StopTrimmer([])
    assert plain.push("abc") == "abc" and plain.finish() == ""
