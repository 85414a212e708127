"""The batched sampler (issue 16.6): per-row parameter tensors, per-row seeds independent of batch-mates, one
transfer to the host per step, the draw's distribution, typical-p against transformers, min_tokens, and
top logprobs against the model's log-softmax."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from transformers.generation.logits_process import TypicalLogitsWarper

from adapters_core.sampling import seeded_gumbel, warp, warp_rows
from server.errors import InvalidInputError
from server.sampling import Pick, RowSampler, SamplingParams, choose_tokens

V = 40


def _logits(seed: int, rows: int = 1) -> torch.Tensor:
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(seed)) * 3


MIXED = [
    SamplingParams(),
    SamplingParams(do_sample=True, temperature=0.7, top_k=5, seed=1),
    SamplingParams(do_sample=True, top_p=0.8, repetition_penalty=1.3, seed=2),
    SamplingParams(repetition_penalty=1.5),
    SamplingParams(do_sample=True, typical_p=0.6, seed=3, top_logprobs=3),
    SamplingParams(do_sample=True, temperature=1e-300, seed=4, min_tokens=2, stop_token_ids=frozenset({7})),
]


def _run(params: list[SamplingParams], steps: int, seed: int) -> list[list[int]]:
    """Each row's tokens over `steps` steps; row i's logits at step t depend on (seed, i, t) only."""
    samplers = [RowSampler(p, [3, 4]) for p in params]
    out: list[list[int]] = [[] for _ in params]
    for t in range(steps):
        logits = torch.cat([_logits(seed * 1000 + t, 1) + i for i in range(len(params))])
        for i, pick in enumerate(choose_tokens(samplers, logits)):
            assert isinstance(pick, Pick), pick
            out[i].append(pick.token_id)
    return out


def test_a_seeded_row_does_not_depend_on_its_batch_mates() -> None:
    together = _run(MIXED, steps=12, seed=5)
    assert len({tuple(tokens) for tokens in together}) > 3  # the rows really differ
    for i, params in enumerate(MIXED):
        # The same row's logits, alone at first and then behind another row with its own seed.
        alone, behind = RowSampler(params, [3, 4]), RowSampler(params, [3, 4])
        mate = RowSampler(SamplingParams(do_sample=True, seed=99, top_k=3), [1])
        got_alone, got_behind = [], []
        for t in range(12):
            mine = _logits(5 * 1000 + t, 1) + i
            a = choose_tokens([alone], mine)[0]
            b = choose_tokens([mate, behind], torch.cat([_logits(77 + t, 1), mine]))[1]
            assert isinstance(a, Pick) and isinstance(b, Pick)
            got_alone.append(a.token_id)
            got_behind.append(b.token_id)
        assert got_alone == together[i] == got_behind, params


def test_sampled_rows_differ_by_seed_and_step() -> None:
    a = _run([SamplingParams(do_sample=True, temperature=3.0, seed=1)], steps=20, seed=0)[0]
    b = _run([SamplingParams(do_sample=True, temperature=3.0, seed=2)], steps=20, seed=0)[0]
    assert a != b and len(set(a)) > 3


def test_the_draw_follows_the_softmax() -> None:
    """Gumbel-max with the counter-based noise samples softmax(scores): 20,000 draws (seeds x steps)."""
    scores = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, float("-inf")]], dtype=torch.float64)
    probs = torch.softmax(scores, dim=-1)[0]
    seeds = torch.arange(2000, dtype=torch.int64).repeat_interleave(10)
    steps = torch.arange(10, dtype=torch.int64).repeat(2000)
    draws = (scores + seeded_gumbel(seeds, steps, 6)).argmax(dim=-1)
    freq = torch.bincount(draws, minlength=6).double() / len(draws)
    assert freq[5] == 0  # a removed token is never drawn
    assert torch.allclose(freq, probs, atol=0.012), (freq, probs)


def test_the_noise_is_a_function_of_seed_step_and_token_only() -> None:
    seeds = torch.tensor([5, 2**62 + 3, 5])
    steps = torch.tensor([0, 7, 1])
    noise = seeded_gumbel(seeds, steps, 50)
    assert torch.equal(noise[1:2], seeded_gumbel(seeds[1:2], steps[1:2], 50))
    assert not torch.equal(noise[0], noise[2])  # the next step draws new noise
    assert torch.isfinite(noise).all()


@pytest.mark.parametrize("seed", range(6))
def test_batched_warpers_equal_the_per_row_warp(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    scores = (torch.randn(6, V, generator=g) * 4).double()
    temperature = [0.3, 1.0, 2.5, 1e-300, 1.0, 0.9]
    top_k = [None, 3, V, 1, None, 10]
    top_p = [0.9, None, 0.5, 0.99, 1e-9, None]
    got = warp_rows(
        scores,
        torch.tensor(temperature, dtype=torch.float64),
        torch.tensor([k or V for k in top_k]),
        torch.tensor([p or 2.0 for p in top_p], dtype=torch.float64),
    )
    for i in range(6):
        want = warp(scores[i], temperature[i], top_k[i], top_p[i])
        assert torch.equal(torch.isinf(got[i]), torch.isinf(want)), i
        finite = torch.isfinite(want)
        assert torch.allclose(got[i][finite], want[finite], rtol=0, atol=0), i


@pytest.mark.parametrize("mass", [0.2, 0.5, 0.9])
def test_typical_p_keeps_what_transformers_keeps(mass: float) -> None:
    scores = _logits(11, rows=4).double()
    ours = warp_rows(scores, torch.ones(4, dtype=torch.float64), typical_p=torch.full((4,), mass).double())
    theirs = TypicalLogitsWarper(mass)(torch.zeros(4, 1, dtype=torch.long), scores - scores.amax(-1, True))
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    off = warp_rows(scores, torch.ones(4, dtype=torch.float64), typical_p=torch.full((4,), 2.0).double())
    assert torch.isfinite(off).all()  # > 1: no typical-p for that row


@contextlib.contextmanager
def _count_host_transfers() -> Iterator[list[str]]:
    """Record every way a tensor's value can reach Python (each is a device -> host sync on a GPU)."""
    calls: list[str] = []
    names = ["tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"]
    saved = {name: getattr(torch.Tensor, name) for name in names}

    def wrap(name: str):  # type: ignore[no-untyped-def]
        original = saved[name]

        def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(name)
            return original(self, *args, **kwargs)

        return counted

    try:
        for name in names:
            setattr(torch.Tensor, name, wrap(name))
        yield calls
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


def test_one_transfer_to_the_host_per_step() -> None:
    samplers = [RowSampler(p, [3, 4]) for p in MIXED]
    logits = _logits(1, rows=len(MIXED))
    choose_tokens(
        samplers, logits
    )  # first step builds each row's seen mask (from the prompt: host -> device)
    with _count_host_transfers() as calls:
        picks = choose_tokens(samplers, logits)
    assert all(isinstance(p, Pick) for p in picks)
    assert calls == ["tolist"], calls


def test_top_logprobs_are_the_models_log_softmax() -> None:
    logits = _logits(2, rows=2)
    samplers = [
        RowSampler(SamplingParams(top_logprobs=4), []),
        RowSampler(SamplingParams(top_logprobs=1), []),
    ]
    picks = choose_tokens(samplers, logits)
    want = torch.log_softmax(logits, dim=-1).topk(4)
    for i, pick in enumerate(picks):
        assert isinstance(pick, Pick)
        n = (4, 1)[i]
        assert [t for t, _ in pick.top] == want.indices[i, :n].tolist()
        assert [lp for _, lp in pick.top] == pytest.approx(want.values[i, :n].tolist(), abs=0)
        assert pick.logprob == pytest.approx(float(torch.log_softmax(logits[i], -1)[pick.token_id]), abs=0)


def test_min_tokens_masks_the_end_ids_until_reached() -> None:
    logits = torch.full((1, V), -5.0)
    logits[0, 2] = 10.0  # EOS is by far the best token
    params = SamplingParams(min_tokens=3, eos_token_ids=frozenset({2}), stop_token_ids=frozenset({9}))
    sampler = RowSampler(params, [])
    logits[0, 9] = 9.0  # then the stop token id
    tokens = [sampler.choose(logits[0]) for _ in range(4)]
    assert tokens[:3] == [tokens[0]] * 3 and tokens[0] not in (2, 9)
    assert tokens[3] == 2
    ignoring = RowSampler(SamplingParams(min_tokens=1, eos_token_ids=frozenset({2}), ignore_eos=True), [])
    assert ignoring.choose(logits[0]) == 2  # ignore_eos: EOS does not end the row, so it is not masked


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rows_draw_the_cpus_tokens() -> None:
    """The noise is integer hashing, so a seeded row draws the same tokens on a GPU as on the CPU (float64
    warpers on both; a token could differ only at an exact tie of rounding, which these logits do not have)."""
    cpu, cuda = ([RowSampler(p, [3, 4]) for p in MIXED] for _ in range(2))
    for t in range(8):
        logits = _logits(100 + t, rows=len(MIXED))
        on_cpu = choose_tokens(cpu, logits)
        on_cuda = choose_tokens(cuda, logits.cuda())
        assert [p.token_id for p in on_cpu] == [p.token_id for p in on_cuda]  # type: ignore[union-attr]
        for a, b in zip(on_cpu, on_cuda):
            assert isinstance(a, Pick) and isinstance(b, Pick)
            assert a.logprob == pytest.approx(b.logprob, abs=1e-5)


def test_constraints_that_leave_no_token_fail_that_row_alone() -> None:
    logits = torch.full((2, V), float("-inf"))
    logits[:, 2] = 1.0  # the model gives EOS only, and min_tokens bans it for the first row
    banned = RowSampler(SamplingParams(min_tokens=1, eos_token_ids=frozenset({2})), [])
    picks = choose_tokens([banned, RowSampler(SamplingParams(), [])], logits)
    assert isinstance(picks[0], InvalidInputError) and "allow no token" in str(picks[0])
    assert isinstance(picks[1], Pick) and picks[1].token_id == 2
