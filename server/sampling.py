"""Each row's next token, for the whole batch at once on the logits' device: greedy, temperature, top-k, top-p,
typical-p, repetition penalty, per-row seeds, token masks (structured output, min_tokens) and logprobs.

The math (penalty, warpers, the seeded noise, their float64 numerics) is adapters_core/sampling.py; this
module is the server's glue: request parameters, each row's state (`RowSampler`), per-row parameter tensors,
and per-row errors.

One step (`choose_tokens`), for B rows and a vocabulary of V:

    logits (B, V) -> log_softmax            the reported logprobs: the model's own distribution
                  -> float64 scores
                  -> repetition penalty     per-row penalty (B,) and seen-token mask (B, V)
                  -> token masks            grammar bitmask (B, ceil(V/32)) int32 + min_tokens' banned ids
                  -> warpers                per-row temperature, top_k, top_p, typical_p tensors (B,)
                  -> argmax(scores + noise) Gumbel noise from (seed, step, token): the draw of every row
                  -> one (B, 3 + 2K) tensor to the host: token, logprob, status, K top ids, K top logprobs

Per-row seeds: a sampled row's noise is a pure function of its seed, how many tokens it has drawn and the
token index (`seeded_gumbel`), so a seeded request gives the same tokens whatever shares its batch, on any
device. A row without a `seed` gets a random one, reported back.

Logprobs are vLLM's default (`raw_logprobs`): `log_softmax` of the model's raw logits, before the penalty,
masks and warpers. They are exactly the model's own log-softmax, whatever the sampling parameters.

Numerics (issue 12): every valid parameter is served exactly; none is refused or changed. Any temperature > 0,
however small (5e-324) or large, and any top_p in (0, 1] give a well-defined distribution, computed in float64
on `scores - max(scores)` (the best token scores exactly 0). A row whose logits hold nan or +inf or no finite
value fails alone (`NonFiniteScoresError`, 500); a repetition_penalty that overflows every score fails that
row alone (`InvalidInputError`, 422); so does a mask that leaves no token. A row never gets a different answer
silently.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch

from adapters_core.sampling import penalize, seeded_gumbel, usable_rows, warp_rows

from .errors import EngineError, InvalidInputError

if TYPE_CHECKING:
    from .guided import Guide

__all__ = ["NonFiniteScoresError", "Pick", "RowSampler", "SamplingParams", "choose_tokens", "usable_rows"]

OFF = 2.0  # top_p / typical_p of a row that has none: a mass no cumulative sum reaches


class NonFiniteScoresError(EngineError):
    """The model's logits for a row hold nan or +inf, or no finite value: no token can be picked honestly."""


class Pick(NamedTuple):
    """A row's next token, its logprob under the model's raw logits, and the row's `top_logprobs` best
    (token id, logprob) pairs, best first (empty unless asked for)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks tokens. `do_sample=False` is greedy (temperature and friends ignored).

    `min_tokens`: the ids that end the output (`stop_token_ids`, and `eos_token_ids` unless `ignore_eos`) are
    masked until the row has that many tokens. `eos_token_ids` are the model's, filled in by the server
    (`generation.build_request`). `guide`: the request's structured-output grammar (server/guided.py).
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    top_logprobs: int = 0
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: frozenset[int] = frozenset()
    eos_token_ids: frozenset[int] = frozenset()
    guide: Guide | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise InvalidInputError(f"temperature must be a finite number > 0, not {self.temperature}")
        if self.top_p is not None and not (0 < self.top_p <= 1):
            raise InvalidInputError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.typical_p is not None and not (0 < self.typical_p < 1):
            raise InvalidInputError(f"typical_p must be in (0, 1), not {self.typical_p}")
        if self.top_k is not None and self.top_k < 1:
            raise InvalidInputError(f"top_k must be at least 1, not {self.top_k}")
        penalty = self.repetition_penalty
        if penalty is not None and not (math.isfinite(penalty) and penalty > 0):
            raise InvalidInputError(f"repetition_penalty must be a finite number > 0, not {penalty}")
        if self.top_logprobs < 0 or self.min_tokens < 0:
            raise InvalidInputError("top_logprobs and min_tokens must be >= 0")

    @classmethod
    def from_request(
        cls,
        *,
        do_sample: bool,
        temperature: float | None,
        top_k: int | None,
        top_p: float | None,
        repetition_penalty: float | None,
        seed: int | None,
        typical_p: float | None = None,
        top_logprobs: int = 0,
        guide: Guide | None = None,
    ) -> SamplingParams:
        """TGI's rule: asking for a warper (temperature != 1, top-k, top-p < 1, typical-p) turns sampling on."""
        warped = (
            (temperature not in (None, 1.0))
            or top_k is not None
            or (top_p is not None and top_p < 1.0)
            or typical_p is not None
        )
        return cls(
            do_sample=do_sample or warped,
            temperature=1.0 if temperature is None else temperature,
            top_k=top_k,
            top_p=top_p,
            typical_p=typical_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            top_logprobs=top_logprobs,
            guide=guide,
        )

    @property
    def end_ids(self) -> frozenset[int]:
        """The ids that end the output: stop token ids, and the model's EOS unless `ignore_eos`."""
        return self.stop_token_ids if self.ignore_eos else self.stop_token_ids | self.eos_token_ids

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty not in (None, 1.0)


class RowSampler:
    """One row's sampling state: its params, its seed and step count (the noise's counter), the tokens it
    has seen (for the penalty) and its grammar matcher."""

    def __init__(self, params: SamplingParams, prompt_ids: list[int]) -> None:
        self.params = params
        self.seed: int | None = None
        if params.do_sample:
            self.seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.steps = 0  # tokens drawn so far
        # Repetition penalty looks at prompt and generated tokens alike (HF/CTRL semantics).
        self.seen: set[int] = set(prompt_ids) if params.penalized else set()
        self._seen_mask: torch.Tensor | None = None  # (V,) bool on the logits' device, built at first use
        self.matcher = params.guide.matcher() if params.guide is not None else None
        self.top: tuple[tuple[int, float], ...] = ()  # the top logprobs of its last pick (`Row.accept`)

    def seen_mask(self, vocab: int, device: torch.device) -> torch.Tensor:
        """(V,) bool: the tokens this row has seen, kept on the device and updated in place."""
        if self._seen_mask is None:
            self._seen_mask = torch.zeros(vocab, dtype=torch.bool, device=device)
            if self.seen:
                self._seen_mask[torch.tensor(sorted(self.seen), device=device)] = True
        return self._seen_mask

    def banned(self) -> frozenset[int]:
        """Ids this row may not draw now: its end ids while it has fewer than `min_tokens` tokens."""
        return self.params.end_ids if self.steps < self.params.min_tokens else frozenset()

    def observe(self, token_id: int) -> None:
        self.steps += 1
        if self.params.penalized:
            self.seen.add(token_id)
            if self._seen_mask is not None:
                self._seen_mask[token_id] = True
        if self.matcher is not None and not self.matcher.consume_token(token_id):
            raise InvalidInputError(f"the grammar refused token {token_id}: {self.matcher.get_error()}")

    def choose(self, logits: torch.Tensor) -> int:
        """This row alone: its next token from its logits (V,) (raises what would fail the row)."""
        pick = choose_tokens([self], logits[None])[0]
        if isinstance(pick, Exception):
            raise pick
        return pick.token_id


# -- the batched step -------------------------------------------------------------------------------------
_FINE, _NON_FINITE, _PENALTY_OVERFLOW, _NOTHING_ALLOWED = 0, 1, 2, 3


def choose_tokens(samplers: list[RowSampler], logits: torch.Tensor) -> list[Pick | Exception]:
    """Next token, its logprob and top logprobs for every row. logits: (B, V), row i belongs to samplers[i].

    A row whose choice fails gets its exception in place of a `Pick`; the other rows are unaffected.
    Everything runs batched on the logits' device; the result comes to the host in one transfer.
    """
    vocab = logits.shape[-1]
    device = logits.device
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, V) the model's distribution, reported
    status = torch.where(usable_rows(logits), _FINE, _NON_FINITE)  # (B,)
    scores = logits.double()  # float64 throughout: see the module docstring
    scores, status = _penalize(samplers, scores, status)
    scores, status = _mask(samplers, scores, status)
    tokens = scores.argmax(dim=-1)  # (B,) greedy; sampled rows are replaced below
    sampled = [i for i, s in enumerate(samplers) if s.params.do_sample]
    if sampled:
        rows = torch.tensor(sampled, device=device)
        tokens[rows] = _draw([samplers[i] for i in sampled], scores[rows])
    chosen = logprobs.gather(1, tokens[:, None])  # (B, 1)
    k = max(s.params.top_logprobs for s in samplers)
    parts = [tokens[:, None].double(), chosen.double(), status[:, None].double()]
    if k:
        top = logprobs.topk(min(k, vocab), dim=-1)  # (B, K) each, best first
        parts += [top.indices.double(), top.values.double()]
    host = torch.cat(parts, dim=1).tolist()  # the step's one transfer to the host
    return [_finish_row(sampler, row, k) for sampler, row in zip(samplers, host)]


def _penalize(
    samplers: list[RowSampler], scores: torch.Tensor, status: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Repetition penalty of the rows that ask for one; a row it pushes entirely to -inf gets its status."""
    penalized = [i for i, s in enumerate(samplers) if s.params.penalized]
    if not penalized:
        return scores, status
    batch, vocab = scores.shape
    seen = torch.zeros(batch, vocab, dtype=torch.bool, device=scores.device)
    penalty = torch.ones(batch, 1, dtype=torch.float64, device=scores.device)
    for i in penalized:
        seen[i] = samplers[i].seen_mask(vocab, scores.device)
        penalty[i] = samplers[i].params.repetition_penalty or 1.0
    scores = penalize(scores, seen, penalty)
    overflow = ~torch.isfinite(scores).any(dim=-1) & (status == _FINE)
    return scores, torch.where(overflow, _PENALTY_OVERFLOW, status)


def _mask(
    samplers: list[RowSampler], scores: torch.Tensor, status: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grammar bitmasks and min_tokens' banned ids as one (B, V) mask; a row left with nothing gets its
    status. The bitmasks are computed on the host (llguidance) and sent to the device in one copy."""
    guided = [i for i, s in enumerate(samplers) if s.matcher is not None]
    banned = [(i, s.banned()) for i, s in enumerate(samplers)]
    banned = [(i, ids) for i, ids in banned if ids]
    if not guided and not banned:
        return scores, status
    batch, vocab = scores.shape
    allowed = torch.ones(batch, vocab, dtype=torch.bool, device=scores.device)
    if guided:
        from .guided import fill_bitmasks, unpack_bitmask

        bits = fill_bitmasks([samplers[i].matcher for i in guided], vocab)  # (G, ceil(V/32)) int32, host
        allowed[torch.tensor(guided, device=scores.device)] = unpack_bitmask(bits.to(scores.device), vocab)
    for i, ids in banned:
        allowed[i, [t for t in ids if t < vocab]] = False
    scores = scores.masked_fill(~allowed, float("-inf"))
    nothing = ~torch.isfinite(scores).any(dim=-1) & (status == _FINE)
    return scores, torch.where(nothing, _NOTHING_ALLOWED, status)


def _draw(samplers: list[RowSampler], scores: torch.Tensor) -> torch.Tensor:
    """One token per sampled row: argmax(warped scores + the row's seeded Gumbel noise). scores (S, V)."""
    device = scores.device
    params = [s.params for s in samplers]

    def column(values: list[float], dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    vocab = scores.shape[-1]
    top_k = column([p.top_k or vocab for p in params], torch.int64) if any(p.top_k for p in params) else None
    nucleus = [p.top_p if p.top_p is not None and p.top_p < 1 else OFF for p in params]
    typical = [p.typical_p or OFF for p in params]
    warped = warp_rows(
        scores,
        column([p.temperature for p in params]),
        top_k,
        column(nucleus) if min(nucleus) < 1 else None,  # decided on the host: no sync
        column(typical) if min(typical) < 1 else None,
    )
    seeds = column([s.seed or 0 for s in samplers], torch.int64)
    steps = column([s.steps for s in samplers], torch.int64)
    return (warped + seeded_gumbel(seeds, steps, vocab)).argmax(dim=-1)


def _finish_row(sampler: RowSampler, row: list[float], k: int) -> Pick | Exception:
    """A row's `Pick` from its host values, or the exception that fails it alone."""
    token, logprob, status = int(row[0]), row[1], int(row[2])
    if status == _NON_FINITE:
        return NonFiniteScoresError(
            "the model's scores for this request are not finite numbers (nan or inf), so no token "
            "can be chosen; its adapter may hold weights that overflow"
        )
    if status == _PENALTY_OVERFLOW:
        return InvalidInputError(
            f"repetition_penalty {sampler.params.repetition_penalty} pushes every token's score to -inf, so "
            "no token can be chosen; use a smaller repetition_penalty (typical values are 1.0 to 2.0)"
        )
    if status == _NOTHING_ALLOWED:
        return InvalidInputError(
            "the request's constraints (its grammar, or min_tokens) allow no token the model can give at this "
            "point: the tokenizer's vocabulary may not be able to write what the grammar requires; loosen the "
            "grammar or lower min_tokens"
        )
    n = sampler.params.top_logprobs
    top = tuple((int(row[3 + j]), row[3 + k + j]) for j in range(min(n, k)))
    try:
        sampler.observe(token)
    except Exception as exc:  # this row fails alone
        return exc
    sampler.top = top
    return Pick(token, logprob, top)
