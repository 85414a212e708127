"""Each row's next token: greedy, temperature, top-k, top-p, repetition penalty, seeded sampling.

The math (penalty, warpers, the draw, and their float64 numerics) is adapters_core/sampling.py, shared with
the library's `generate`; this module is the server's glue around it: request parameters, one generator per
row, the tokens a row has seen, and per-row errors.

Every row owns a `RowSampler`. A sampled row draws from its own `torch.Generator` (seeded by the request's
`seed`, or a fresh random seed that is reported back), on the CPU, from that row's logits only — so a seeded
request gives the same tokens whatever else shares its batch. Greedy rows without a penalty take one batched
argmax; rows that need processing are handled one by one (the work is O(V) per row, tiny next to a forward).

Logprobs are the model's own: `log_softmax` of the raw logits (before penalty and warpers), as vLLM reports.

Numerics (decided for issue 12): every valid parameter is served exactly; none is refused or changed. Any
temperature > 0, however small (1e-300, 5e-324) or large, and any top_p in (0, 1] give a well-defined
distribution, so they are computed safely rather than rejected with a 422 and rather than floored:

* the warpers run in float64 on `scores - max(scores)`: the best token scores exactly 0, so dividing by
  the temperature gives 0 for it and <= 0 (at worst -inf) for the rest, never nan. float32 cannot do this:
  it rounds 5e-324 and 1e-300 to 0 (a division by zero). As the temperature goes to 0 the distribution goes
  to the argmax, which is what a tiny temperature means;
* top_p always keeps the best token (a top_p below float32's smallest number used to drop every token);
* before a token is picked, a row whose scores have no finite value, or a nan or +inf, fails that row alone
  with an error that says why (`NonFiniteScoresError`, 500: the model's logits — e.g. a broken adapter;
  `InvalidInputError`, 422: a repetition_penalty so large that every token's score overflows). A row is never
  given a different answer silently. Values that are not numbers at all (temperature <= 0, nan, inf) are
  refused when `SamplingParams` is built (422; the HTTP schemas refuse them first).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import NamedTuple

import torch

from adapters_core.sampling import draw, penalize, usable_rows, warp

from .errors import EngineError, InvalidInputError

__all__ = ["NonFiniteScoresError", "Pick", "RowSampler", "SamplingParams", "choose_tokens", "usable_rows"]


class NonFiniteScoresError(EngineError):
    """The model's logits for a row hold nan or +inf, or no finite value: no token can be picked honestly."""


class Pick(NamedTuple):
    """A row's next token and its logprob under the model's raw logits."""

    token_id: int
    logprob: float


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks tokens. `do_sample=False` is greedy (temperature and friends ignored)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise InvalidInputError(f"temperature must be a finite number > 0, not {self.temperature}")
        if self.top_p is not None and not (0 < self.top_p <= 1):
            raise InvalidInputError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise InvalidInputError(f"top_k must be at least 1, not {self.top_k}")
        penalty = self.repetition_penalty
        if penalty is not None and not (math.isfinite(penalty) and penalty > 0):
            raise InvalidInputError(f"repetition_penalty must be a finite number > 0, not {penalty}")

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
    ) -> SamplingParams:
        """TGI's rule: asking for a warper (temperature != 1, top-k, top-p < 1) turns sampling on."""
        warped = (temperature not in (None, 1.0)) or top_k is not None or (top_p is not None and top_p < 1.0)
        return cls(
            do_sample=do_sample or warped,
            temperature=1.0 if temperature is None else temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
        )


class RowSampler:
    """One row's sampler: its params, its generator and the tokens it has seen (for the penalty)."""

    def __init__(self, params: SamplingParams, prompt_ids: list[int]) -> None:
        self.params = params
        self.seed: int | None = None
        self.generator: torch.Generator | None = None
        if params.do_sample:
            self.seed = params.seed if params.seed is not None else secrets.randbits(63)
            self.generator = torch.Generator(device="cpu").manual_seed(self.seed)
        # Repetition penalty looks at prompt and generated tokens alike (HF/CTRL semantics).
        self.seen: set[int] = set(prompt_ids) if params.repetition_penalty not in (None, 1.0) else set()

    @property
    def is_plain_greedy(self) -> bool:
        return not self.params.do_sample and self.params.repetition_penalty in (None, 1.0)

    def observe(self, token_id: int) -> None:
        if self.params.repetition_penalty not in (None, 1.0):
            self.seen.add(token_id)

    def choose(self, logits: torch.Tensor) -> int:
        """Pick the next token from this row's logits (V,), which hold no nan or +inf (`choose_tokens`)."""
        scores = logits.double()  # float64 throughout: see the module docstring
        penalty = self.params.repetition_penalty
        if penalty not in (None, 1.0) and self.seen:
            assert penalty is not None
            seen = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
            seen[torch.tensor(sorted(self.seen), device=scores.device)] = True
            scores = penalize(scores, seen, penalty)
            if not torch.isfinite(scores).any():
                raise InvalidInputError(
                    f"repetition_penalty {penalty} pushes every token's score to -inf, so no token can be "
                    "chosen; use a smaller repetition_penalty (typical values are 1.0 to 2.0)"
                )
        if not self.params.do_sample:
            return int(torch.argmax(scores))
        p = self.params
        return int(draw(warp(scores.cpu(), p.temperature, p.top_k, p.top_p), self.generator))  # CPU generator


def choose_tokens(samplers: list[RowSampler], logits: torch.Tensor) -> list[Pick | Exception]:
    """Next token and its logprob for every row. logits: (B, V), row i belongs to samplers[i].

    A row whose choice fails gets its exception in place of a `Pick`; the other rows are unaffected.
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
    greedy = torch.argmax(logits, dim=-1).tolist()  # one batched argmax covers every plain-greedy row
    usable = usable_rows(logits).tolist()
    picks: list[int | Exception] = []
    for i, sampler in enumerate(samplers):
        if not usable[i]:
            picks.append(
                NonFiniteScoresError(
                    "the model's scores for this request are not finite numbers (nan or inf), so no token "
                    "can be chosen; its adapter may hold weights that overflow"
                )
            )
            continue
        try:
            token = int(greedy[i]) if sampler.is_plain_greedy else sampler.choose(logits[i])
        except Exception as exc:  # this row fails alone
            picks.append(exc)
            continue
        sampler.observe(token)
        picks.append(token)
    index = torch.tensor([p if isinstance(p, int) else 0 for p in picks], device=logprobs.device)
    chosen = logprobs[torch.arange(len(picks), device=logprobs.device), index].tolist()
    return [p if isinstance(p, Exception) else Pick(p, float(lp)) for p, lp in zip(picks, chosen)]
