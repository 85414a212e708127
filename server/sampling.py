"""Per-row next-token choice: greedy, temperature, top-k, top-p, repetition penalty, seeded sampling.

Every row owns a `RowSampler`. A sampled row draws from its own `torch.Generator` (seeded by the request's
`seed`, or a fresh random seed that is reported back), on the CPU, from that row's logits only — so a seeded
request gives the same tokens whatever else shares its batch. Greedy rows without a penalty take one batched
argmax; rows that need processing are handled one by one (the work is O(V) per row, tiny next to a forward).

Logprobs are the model's own: `log_softmax` of the raw logits (before penalty and warpers), as vLLM reports.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks tokens. `do_sample=False` is greedy (temperature and friends ignored)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None

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
        """Pick the next token from this row's logits (V,)."""
        scores = logits.float()
        penalty = self.params.repetition_penalty
        if penalty not in (None, 1.0) and self.seen:
            assert penalty is not None
            idx = torch.tensor(sorted(self.seen), device=scores.device)
            picked = scores[idx]
            scores = scores.clone()
            scores[idx] = torch.where(picked > 0, picked / penalty, picked * penalty)
        if not self.params.do_sample:
            return int(torch.argmax(scores))
        return self._sample(scores)

    def _sample(self, scores: torch.Tensor) -> int:
        scores = (scores / self.params.temperature).cpu()  # the generator lives on the CPU
        if self.params.top_k is not None and self.params.top_k < scores.numel():
            kth = torch.topk(scores, self.params.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.params.top_p is not None and self.params.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
            # Drop a token when the mass before it already reaches top_p (the best token always stays).
            drop_sorted = (cumulative - torch.softmax(sorted_scores, dim=-1)) >= self.params.top_p
            drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
            scores = scores.masked_fill(drop, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def choose_tokens(samplers: list[RowSampler], logits: torch.Tensor) -> tuple[list[int], list[float]]:
    """Next token and its logprob for every row. logits: (B, V), row i belongs to samplers[i]."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
    greedy = torch.argmax(logits, dim=-1).tolist()  # one batched argmax covers every plain-greedy row
    tokens = [
        int(greedy[i]) if sampler.is_plain_greedy else sampler.choose(logits[i])
        for i, sampler in enumerate(samplers)
    ]
    for sampler, token in zip(samplers, tokens):
        sampler.observe(token)
    chosen = logprobs[
        torch.arange(len(tokens), device=logprobs.device), torch.tensor(tokens, device=logprobs.device)
    ].tolist()
    return tokens, [float(x) for x in chosen]
