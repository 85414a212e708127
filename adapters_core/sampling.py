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


def penalize(scores: torch.Tensor, seen: torch.Tensor, penalty: float | torch.Tensor) -> torch.Tensor:
    """Repetition penalty. Semantics: for every seen token v of a row,
    `s[v] <- s[v] / penalty if s[v] > 0 else s[v] * penalty`; other tokens unchanged.

    scores: (..., V) float64; seen: (..., V) bool, the tokens of the prompt and of the output so far;
    penalty: one number, or (..., 1) float64, one per row.
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


# -- Batched, per-row parameters (the server's sampler) -------------------------------------------------------
def warp_rows(
    scores: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor | None = None,
    top_p: torch.Tensor | None = None,
    typical_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """`warp` with one parameter per row, then typical decoding. Semantics per row i: exactly
    `warp(scores[i], temperature[i], top_k[i], top_p[i])`, then transformers' `TypicalLogitsWarper(typical_p[i])`.

    scores: (B, V) float64 (rules of `warp`); temperature: (B,) float64 > 0; top_k: (B,) int64, V (or more)
    for no top-k; top_p: (B,) float64, > 1 for no top-p (1.0 itself could drop tokens to rounding);
    typical_p: (B,) float64, > 1 for none. Returns (B, V) float64, the best token of each row at exactly 0.
    """
    scores = (scores - scores.amax(dim=-1, keepdim=True)) / temperature[:, None]  # best 0, the rest <= 0
    if top_k is None and top_p is None and typical_p is None:
        return scores
    vocab = scores.shape[-1]
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True)  # (B, V), one sort for both
    drop_sorted = torch.zeros_like(sorted_scores, dtype=torch.bool)
    if top_k is not None:
        kth = sorted_scores.gather(1, (top_k.clamp(1, vocab) - 1)[:, None])  # (B, 1)
        drop_sorted |= sorted_scores < kth  # ties with the k-th stay, as in `warp`
    if top_p is not None:
        probs = torch.softmax(sorted_scores.masked_fill(drop_sorted, float("-inf")), dim=-1)
        drop_sorted |= (probs.cumsum(dim=-1) - probs) >= top_p[:, None]
    drop_sorted[:, 0] = False  # the best token always stays
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    scores = scores.masked_fill(drop, float("-inf"))
    if typical_p is not None:
        scores = _typical(scores, typical_p)
    return scores


def _typical(scores: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """transformers' `TypicalLogitsWarper` per row (min_tokens_to_keep=1): keep the tokens whose surprisal is
    closest to the entropy until their mass reaches `mass[i]`. scores (B, V) float64; mass (B,), > 1 = off."""
    logp = torch.log_softmax(scores, dim=-1)
    entropy = -(logp * logp.exp()).nansum(dim=-1, keepdim=True)  # -inf * 0 = nan: those tokens add nothing
    shifted = (-logp - entropy).abs()
    sorted_shifted, order = torch.sort(shifted, dim=-1)
    cumulative = torch.softmax(scores.gather(1, order), dim=-1).cumsum(dim=-1)
    last = (cumulative < mass[:, None]).sum(dim=1).clamp(max=scores.shape[-1] - 1)
    drop_sorted = sorted_shifted > sorted_shifted.gather(1, last[:, None])
    drop_sorted[:, 0] = False
    drop_sorted &= (mass <= 1.0)[:, None]  # rows without typical_p keep everything
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, m: int) -> torch.Tensor:
    """(x * m) mod 2**32 for int64 tensors holding 32-bit values, without int64 overflow."""
    lo = x * (m & 0xFFFF)
    hi = ((x * (m >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash with full avalanche (Wellons' `lowbias32`), on int64 tensors of 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def seeded_gumbel(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise (B, V) float64 that is a pure function of (seed, step, token): a counter-based
    generator, so a row's noise never depends on the other rows of its batch, the batch size or the device.

    seeds: (B,) int64 in [0, 2**63); steps: (B,) int64, the row's count of tokens drawn so far.
    `argmax(scores + noise)` is a draw from `softmax(scores)` (the Gumbel-max trick): one batched op for
    every row, with per-row seeds.
    """
    lo, hi = seeds & _MASK32, (seeds >> 32) & _MASK32
    key = _mix32(lo ^ _mix32(hi ^ _mix32(steps & _MASK32)))  # (B,)
    tokens = _mix32(torch.arange(vocab, device=seeds.device, dtype=torch.int64) + 0x9E3779B9)  # (V,)
    bits = _mix32(key[:, None] ^ tokens[None, :])  # (B, V) 32 random bits each
    uniform = (bits.double() + 0.5) / 2.0**32  # in (0, 1): the log never sees 0 or 1
    return -torch.log(-torch.log(uniform))
