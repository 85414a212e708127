"""Seeded request traces in the shape of S-LoRA's synthetic workload (arXiv 2311.03285, section 7).

A trace is a list of `TraceRequest`s, made from a `WorkloadSpec` and one seed, so the same spec and seed always
give the same trace (request for request) and a different seed a different one:

- adapter popularity: S-LoRA's power law, `index = floor(N * u)` with `u ~ Power(alpha)` (density
  `alpha * u**(alpha - 1)` on [0, 1]), so `P(index < k) = (k / N) ** alpha`: `alpha = 1` is uniform, smaller
  is more skewed towards the first adapters (index 0 is the most popular);
- arrivals: Gamma-distributed gaps with mean `1 / rate` and coefficient of variation `cv`
  (shape `1 / cv**2`, scale `cv**2 / rate`); `cv = 1` is a Poisson process, larger is burstier;
- lengths: prompt and output token counts uniform on inclusive ranges, or prompts (and output lengths) from
  a JSONL file (`{"prompt": str, "output_len": int?}` per line), drawn with the same seed.

Synthetic prompts are words of the benchmark's word-level vocabulary (fixtures.py), one token per word, so a
prompt of `n` words is exactly `n` tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class WorkloadSpec:
    """What a trace looks like. `rate` is requests per second (open loop)."""

    n_adapters: int
    n_requests: int
    rate: float = 1.0
    cv: float = 1.0
    alpha: float = 1.0
    input_len: tuple[int, int] = (8, 32)
    output_len: tuple[int, int] = (8, 32)
    prompts_file: str | None = None

    def __post_init__(self) -> None:
        if self.n_adapters < 0 or self.n_requests < 1:
            raise ValueError("a workload needs n_adapters >= 0 and n_requests >= 1")
        if self.rate <= 0 or self.cv <= 0:
            raise ValueError(f"rate ({self.rate}) and cv ({self.cv}) must be positive")
        if self.alpha <= 0:
            raise ValueError(f"alpha ({self.alpha}) must be positive: 1 is uniform, smaller is more skewed")
        for name, (lo, hi) in (("input_len", self.input_len), ("output_len", self.output_len)):
            if not 1 <= lo <= hi:
                raise ValueError(f"{name} {lo}..{hi} must satisfy 1 <= low <= high")


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace. `adapter` is an index into the adapters (None: the base model)."""

    index: int
    arrival_s: float
    adapter: int | None
    prompt: str
    prompt_tokens: int | None  # None when the prompt came from a file (its tokens depend on the tokenizer)
    max_new_tokens: int

    def without_adapter(self) -> TraceRequest:
        return replace(self, adapter=None)


def adapter_indices(power_draws: np.ndarray, n_adapters: int) -> np.ndarray:
    """S-LoRA's popularity: `floor(N * u)` for `u ~ Power(alpha)`, clipped to N - 1 (u can be 1.0)."""
    return np.minimum((power_draws * n_adapters).astype(np.int64), n_adapters - 1)


def gamma_gaps(rng: np.random.Generator, rate: float, cv: float, size: int) -> np.ndarray:
    """Inter-arrival gaps in seconds: Gamma with mean 1/rate and coefficient of variation cv."""
    return rng.gamma(1.0 / (cv * cv), cv * cv / rate, size)


def make_trace(spec: WorkloadSpec, seed: int, words: list[str]) -> list[TraceRequest]:
    """The trace of `spec` under `seed`; synthetic prompts are made of `words` (one token each).

    The draws happen in a fixed order (adapters, gaps, lengths, prompts) from one generator, so two specs
    that differ only in `n_adapters` share their arrivals and lengths: a sweep over N changes nothing else.
    """
    rng = np.random.default_rng(seed)
    n = spec.n_requests
    draws = rng.power(spec.alpha, n)  # drawn even without adapters, so the other draws stay aligned
    adapters = adapter_indices(draws, spec.n_adapters) if spec.n_adapters else None
    arrivals = np.cumsum(gamma_gaps(rng, spec.rate, spec.cv, n))
    arrivals -= arrivals[0]  # the first request goes out at once
    output_lens = rng.integers(spec.output_len[0], spec.output_len[1] + 1, n)
    prompts, prompt_tokens, file_outputs = _prompts(spec, rng, words, n)
    return [
        TraceRequest(
            index=i,
            arrival_s=float(arrivals[i]),
            adapter=None if adapters is None else int(adapters[i]),
            prompt=prompts[i],
            prompt_tokens=prompt_tokens[i],
            max_new_tokens=int(file_outputs[i] or output_lens[i]),
        )
        for i in range(n)
    ]


def _prompts(
    spec: WorkloadSpec, rng: np.random.Generator, words: list[str], n: int
) -> tuple[list[str], list[int | None], list[int | None]]:
    if spec.prompts_file is None:
        lens = rng.integers(spec.input_len[0], spec.input_len[1] + 1, n)
        picks = rng.integers(0, len(words), int(lens.sum()))
        prompts, start = [], 0
        for length in lens:
            prompts.append(" ".join(words[j] for j in picks[start : start + length]))
            start += length
        return prompts, [int(x) for x in lens], [None] * n
    rows = read_prompts_file(spec.prompts_file)
    chosen = rng.choice(len(rows), size=n, replace=n > len(rows))
    return (
        [rows[i][0] for i in chosen],
        [None] * n,
        [rows[i][1] for i in chosen],
    )


def read_prompts_file(path: str) -> list[tuple[str, int | None]]:
    """(prompt, output_len or None) per line of a JSONL file; a clear error names the bad line."""
    rows: list[tuple[str, int | None]] = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise ValueError(f'{path}:{lineno}: each line needs {{"prompt": str, "output_len": int?}}')
        out = item.get("output_len")
        if out is not None and (not isinstance(out, int) or out < 1):
            raise ValueError(f"{path}:{lineno}: output_len must be a positive integer, got {out!r}")
        rows.append((item["prompt"], out))
    if not rows:
        raise ValueError(f"{path}: no prompts (one JSON object per line)")
    return rows


def popularity(trace: list[TraceRequest], n_adapters: int) -> np.ndarray:
    """Requests per adapter index (length n_adapters)."""
    used = [r.adapter for r in trace if r.adapter is not None]
    return np.bincount(np.asarray(used, dtype=np.int64), minlength=n_adapters)
