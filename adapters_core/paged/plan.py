"""What one engine step runs: the contract between the scheduler (server/engine) and the model (paged_step).

A generating row's *stream* is `[v virtual positions][prompt tokens][generated tokens]`, v =
`model.stream_prefix_length(adapter)`. Stream position p lives in block `block_table[p // block_size]` at
offset `p % block_size`. A step's plan lists chunks: a decode chunk is one token, a prefill chunk a run of a
row's prompt; every row at most once.

What `paged_step` returns: (K, V) float logits, rows in plan order; a chunk with `all_logits` contributes one
row per token (row j: the logits after its token j, i.e. the distribution of stream position start + j + 1;
its last row is the one a `want_logits` chunk gets), any other chunk one row (its last token's) when
`want_logits`, else none.

Encoder-decoder bases: a row's stream is its decoder stream and each of its chunks carries `encoder_ids`
(paged/seq2seq.py); the engine calls `model.paged_release(seq_id)` when the row finishes or is preempted.
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
    # Encoder-decoder rows (T5, BART): the row's encoder input (its prompt). The stream is then the decoder's:
    # [decoder_start_token_id][generated …]. The model encodes it when the row has no encoder keys/values yet
    # (or starts over at 0) and keeps them until `paged_release(seq_id)` (paged/seq2seq.py).
    encoder_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class StepPlan:
    chunks: list[SeqChunk]  # decode chunks (1 token) and prefill chunks, in any order; every seq_id once
