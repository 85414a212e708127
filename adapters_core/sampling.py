"""Choosing the next token from logits: the one implementation of the repetition penalty, temperature, top-k,
top-p and the draw, shared by the library's `generate` (prompt_learning/generation.py, multi/steps.py)
and the server's per-row samplers (server/sampling.py).

Semantics (transformers' processors, in this order): the repetition penalty divides a seen token's positive
score by `penalty` and multiplies a negative one (CTRL); temperature divides every score; top-k keeps the k
best scores (ties with the k-th included); top-p keeps the smallest set of best tokens whose probability
mass reaches `top_p`; the token is drawn from the softmax of what is left.

Numerics: every function works in float64 on `scores - max(scores)`, so the best token scores exactly 0 and
any temperature > 0, however small (5e-324) or large, gives 0 for it and <= 0 (at worst -inf) for the rest,
never nan: a tiny temperature means the argmax, as it should. top-p always keeps the best token. Callers
hand in scores with at least one finite value and no nan or +inf (`usable_rows`).
"""

from __future__ import annotations

import torch


def usable_rows(logits: torch.Tensor) -> torch.Tensor:
    """(B,) bool: rows of `logits` (B, V) a token can be picked from — no nan, no +inf, some finite value
    (-inf alone is allowed: models mask tokens that way)."""
    bad = torch.isnan(logits).any(dim=-1) | torch.isposinf(logits).any(dim=-1)
    return ~bad & torch.isfinite(logits).any(dim=-1)


def penalize(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Repetition penalty. Semantics: for every seen token v of a row,
    `s[v] <- s[v] / penalty if s[v] > 0 else s[v] * penalty`; other tokens unchanged.

    scores: (..., V) float64; seen: (..., V) bool, the tokens of the prompt and of the output so far.
    """
    penalized = torch.where(scores > 0, scores / penalty, scores * penalty)
    return torch.where(seen, penalized, scores)


def seen_mask(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(B, T) token ids -> (B, V) bool: which tokens each row has seen."""
    mask = torch.zeros(ids.shape[0], vocab_size, dtype=torch.bool, device=ids.device)
    return mask.scatter_(1, ids.long(), True)


def warp(
    scores: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Temperature, then top-k, then top-p; removed tokens score -inf.

    scores: (..., V) float64 with at least one finite value per row and no nan or +inf. Returns (..., V)
    float64 with the best token of each row at exactly 0 and the rest <= 0.
    """
    scores = (scores - scores.amax(dim=-1, keepdim=True)) / temperature  # best 0, the rest <= 0
    if top_k is not None and 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        probs = torch.softmax(sorted_scores, dim=-1)
        # Drop a token when the mass before it already reaches top_p; the best token always stays.
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def draw(scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from `softmax(scores)`; scores (..., V) as `warp` returns them -> (...,) int64.

    `generator` must live on the device of `scores` (the server keeps its per-row generators on the CPU)."""
    probs = torch.softmax(scores, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
