"""The per-row sampler and stop-sequence trimming, as plain functions."""

from __future__ import annotations

import torch

from server.generation import StopTrimmer, trim_at_stop
from server.sampling import RowSampler, SamplingParams, choose_tokens


def test_greedy_rows_take_argmax_and_logprobs() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    samplers = [RowSampler(SamplingParams(), [0]) for _ in range(2)]
    tokens, logprobs = choose_tokens(samplers, logits)
    assert tokens == [1, 0]
    assert abs(logprobs[0] - float(torch.log_softmax(logits[0], -1)[1])) < 1e-6


def test_seeded_rows_do_not_depend_on_the_batch() -> None:
    params = SamplingParams(do_sample=True, temperature=0.8, top_k=5, top_p=0.9, seed=7)
    row = torch.randn(50, generator=torch.Generator().manual_seed(0))
    alone = RowSampler(params, [])
    in_batch = RowSampler(params, [])
    other = RowSampler(SamplingParams(do_sample=True, seed=99), [])
    a = [choose_tokens([alone], row[None])[0][0] for _ in range(20)]
    b = [choose_tokens([other, in_batch], torch.stack([row * 2, row]))[0][1] for _ in range(20)]
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


def test_stop_trimmer_never_shows_a_stop() -> None:
    trimmer = StopTrimmer(["END"])
    pieces = ["hel", "lo E", "N", "D more"]
    out = "".join(trimmer.push(p) for p in pieces) + trimmer.finish()
    assert out == "hello "
    assert trim_at_stop("a STOP b", ["STOP", "b"]) == "a "
    plain = StopTrimmer([])
    assert plain.push("abc") == "abc" and plain.finish() == ""
