"""The workload generator (bench/serving/workload.py): reproducible by seed, and its statistics are S-LoRA's
(power-law popularity, Gamma arrivals with the asked rate and coefficient of variation). Large samples with a
fixed seed: deterministic, and tolerances that a wrong formula could not meet."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from bench.serving.workload import (
    WorkloadSpec,
    adapter_indices,
    gamma_gaps,
    make_trace,
    popularity,
    read_prompts_file,
)

WORDS = [f"w{i}" for i in range(200)]


def spec(**overrides) -> WorkloadSpec:
    return WorkloadSpec(**{"n_adapters": 50, "n_requests": 200, "rate": 4.0, **overrides})


def test_the_same_seed_gives_the_same_trace_and_another_seed_does_not() -> None:
    assert make_trace(spec(), 7, WORDS) == make_trace(spec(), 7, WORDS)
    a, b = make_trace(spec(), 7, WORDS), make_trace(spec(), 8, WORDS)
    assert [r.adapter for r in a] != [r.adapter for r in b]
    assert [r.arrival_s for r in a] != [r.arrival_s for r in b]
    assert [r.prompt for r in a] != [r.prompt for r in b]


def test_a_sweep_over_the_number_of_adapters_changes_only_the_adapters() -> None:
    small, large = make_trace(spec(n_adapters=10), 3, WORDS), make_trace(spec(n_adapters=1000), 3, WORDS)
    assert [(r.arrival_s, r.prompt, r.max_new_tokens) for r in small] == [
        (r.arrival_s, r.prompt, r.max_new_tokens) for r in large
    ]
    assert max(r.adapter for r in small) < 10 and max(r.adapter for r in large) >= 10


def test_lengths_are_in_their_ranges_and_a_prompt_of_n_words_is_n_tokens() -> None:
    trace = make_trace(spec(input_len=(3, 9), output_len=(2, 5)), 0, WORDS)
    assert {r.max_new_tokens for r in trace} == {2, 3, 4, 5}
    assert {r.prompt_tokens for r in trace} == set(range(3, 10))
    assert all(len(r.prompt.split()) == r.prompt_tokens for r in trace)
    assert trace[0].arrival_s == 0.0
    assert all(b.arrival_s >= a.arrival_s for a, b in itertools.pairwise(trace))


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.2])
def test_popularity_follows_the_power_law_cdf(alpha: float) -> None:
    """P(index < k) = (k / N) ** alpha: the empirical CDF of 50,000 draws is within 0.01 of it everywhere."""
    n = 100
    draws = np.random.default_rng(0).power(alpha, 50_000)
    counts = np.bincount(adapter_indices(draws, n), minlength=n)
    empirical = np.cumsum(counts) / counts.sum()
    expected = (np.arange(1, n + 1) / n) ** alpha
    assert np.abs(empirical - expected).max() < 0.01


def test_alpha_one_is_uniform_and_a_small_alpha_ranks_adapter_zero_first() -> None:
    uniform = popularity(make_trace(spec(n_requests=20_000, alpha=1.0), 1, WORDS), 50)
    assert uniform.min() > 0.8 * 400 and uniform.max() < 1.2 * 400  # 20,000 / 50 each
    skewed = popularity(make_trace(spec(n_requests=20_000, alpha=0.3), 1, WORDS), 50)
    assert skewed.argmax() == 0
    deciles = skewed.reshape(10, 5).sum(axis=1)
    assert all(a > b for a, b in itertools.pairwise(deciles))  # popularity falls with the rank
    assert deciles[0] > 5 * deciles[-1]


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 4.0])
def test_gamma_gaps_have_the_asked_rate_and_coefficient_of_variation(cv: float) -> None:
    gaps = gamma_gaps(np.random.default_rng(0), 5.0, cv, 50_000)
    assert gaps.mean() == pytest.approx(1 / 5.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)


def test_the_trace_arrives_at_the_asked_rate() -> None:
    trace = make_trace(spec(n_requests=20_000, rate=8.0, cv=2.0), 2, WORDS)
    gaps = np.diff([r.arrival_s for r in trace])
    assert 1 / gaps.mean() == pytest.approx(8.0, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(2.0, rel=0.08)


def test_prompts_come_from_a_jsonl_file(tmp_path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        "\n".join(json.dumps(x) for x in [{"prompt": "w1 w2", "output_len": 7}, {"prompt": "w3"}]) + "\n"
    )
    trace = make_trace(spec(prompts_file=str(path), output_len=(2, 2)), 0, WORDS)
    assert {r.prompt for r in trace} == {"w1 w2", "w3"}
    assert all(r.max_new_tokens == (7 if r.prompt == "w1 w2" else 2) for r in trace)
    assert all(r.prompt_tokens is None for r in trace)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json\n", "prompts.jsonl:1: not JSON"),
        ('{"text": "x"}\n', 'prompts.jsonl:1: each line needs {"prompt"'),
        ('{"prompt": "x"}\n{"prompt": "y", "output_len": 0}\n', "prompts.jsonl:2: output_len must be"),
        ("\n", "no prompts"),
    ],
)
def test_a_bad_prompts_file_names_the_line_and_the_fix(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("(", r"\(")):
        read_prompts_file(str(path))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rate": 0.0}, "must be positive"),
        ({"cv": -1.0}, "must be positive"),
        ({"alpha": 0.0}, "alpha"),
        ({"input_len": (5, 2)}, "input_len 5..2"),
        ({"n_requests": 0}, "n_requests >= 1"),
    ],
)
def test_a_bad_spec_says_what_is_wrong(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec(**overrides)
