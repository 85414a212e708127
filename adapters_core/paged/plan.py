"""What one engine step runs: the contract between the scheduler (server/engine) and the model (paged_step).

A generating row's *stream* is `[v virtual positions][prompt tokens][generated tokens]`, v =
`model.stream_prefix_length(adapter)`. Stream position p lives in block `block_table[p // block_size]` at
offset `p % block_size`. A step's plan lists chunks: a decode chunk is one token, a prefill chunk a run of a
row's prompt; every row at most once.

What `paged_step` returns: (K, V) float logits, rows in plan order; a chunk with `all_logits` contributes one
row per token (row j: the logits after its token j, i.e. the distribution of stream position start + j + 1;
its last row is the one a `want_logits` chunk gets), any other chunk one row (its last token's) when
`want_logits`, else none.
"""

from __future__ import annotations

from dataclasses import dataclass

VIRTUAL = -1  # token id placeholder at a virtual (prompt-tuning) stream position


@dataclass(frozen=True)
class SeqChunk:
    seq_id: int  # the engine's id of the row (stable for its life)
    adapter: str | None  # the model-side adapter name (MultiAdapterModel name; None = base)
    tokens: list[int]  # ids of stream positions [start, start + len(tokens)); VIRTUAL at virtual positions
    start: int  # stream position of tokens[0] (= how many of this row's positions are already cached)
    block_table: list[int]  # physical block ids covering stream positions [0, start + len(tokens))
    want_logits: bool = True  # return logits of the chunk's last token (False for a non-final prefill chunk)
    all_logits: bool = False  # return logits of every token of the chunk (prompt logprobs); see the docstring


@dataclass(frozen=True)
class StepPlan:
    chunks: list[SeqChunk]  # decode chunks (1 token) and prefill chunks, in any order; every seq_id once
