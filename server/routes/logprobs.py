"""Logprobs in the shapes clients expect: OpenAI chat (`logprobs.content`), OpenAI completions (`tokens`,
`token_logprobs`, `top_logprobs`, `text_offset`) and TGI (`tokens`, `top_tokens`).

Every value is the model's own: `log_softmax` of its raw logits at that step, before the penalty, masks and
warpers (vLLM's default, `raw_logprobs`; server/sampling.py). A token is named by its own text
(`Tokenization.token_text`, special tokens included); `bytes` are that text's UTF-8 bytes.
"""

from __future__ import annotations

from typing import Any

from ..engine import PromptLogprobs, TokenEvent
from ..schemas import TokenInfo
from ..tokenization import Tokenization


def _entry(tok: Tokenization, token_id: int, logprob: float) -> dict[str, Any]:
    text = tok.token_text(token_id)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tok: Tokenization, events: list[TokenEvent]) -> dict[str, Any]:
    """OpenAI chat's `logprobs` of these tokens: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    content = [
        {
            **_entry(tok, e.token_id, e.logprob),
            "top_logprobs": [_entry(tok, token_id, lp) for token_id, lp in e.top],
        }
        for e in events
    ]
    return {"content": content}


def completion_logprobs(tok: Tokenization, events: list[TokenEvent], offset: int = 0) -> dict[str, Any]:
    """OpenAI completions' `logprobs`: the sampled token's logprob and, per OpenAI, the `logprobs` most
    likely tokens plus the sampled one (so up to k + 1 entries). `text_offset` is where each token's text
    starts in the returned text (`offset` = the characters before these tokens)."""
    tokens, token_logprobs, top, offsets = [], [], [], []
    for e in events:
        tokens.append(tok.token_text(e.token_id))
        token_logprobs.append(e.logprob)
        alternatives = {tok.token_text(token_id): lp for token_id, lp in e.top}
        alternatives.setdefault(tokens[-1], e.logprob)
        top.append(alternatives)
        offsets.append(offset)
        offset += len(e.text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}


def tgi_token(event: TokenEvent) -> TokenInfo:
    return TokenInfo(id=event.token_id, text=event.text, logprob=event.logprob, special=event.special)


def tgi_top_tokens(tok: Tokenization, event: TokenEvent) -> list[TokenInfo]:
    """TGI's `top_tokens` of one step: the `top_n_tokens` most likely, best first."""
    return [
        TokenInfo(id=token_id, text=tok.token_text(token_id), logprob=lp, special=token_id in tok.special_ids)
        for token_id, lp in event.top
    ]


def tgi_prefill(tok: Tokenization, prompt: PromptLogprobs | None) -> list[TokenInfo]:
    """TGI's `details.prefill` (decoder_input_details): each prompt token, its logprob null for the first."""
    if prompt is None:
        return []
    return [
        TokenInfo(
            id=token_id,
            text=tok.token_text(token_id),
            logprob=None if entry is None else entry[0],
            special=token_id in tok.special_ids,
        )
        for token_id, entry in zip(prompt.ids, prompt.entries)
    ]


def echo_logprobs(tok: Tokenization, prompt: PromptLogprobs) -> dict[str, Any]:
    """OpenAI completions' `logprobs` of the echoed prompt (vLLM's shape): the first token's logprob and
    top_logprobs null, the others as `completion_logprobs`'; `text_offset` from the prompt's decoded text."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top: list[dict[str, float] | None] = []
    offsets: list[int] = []
    for i, (token_id, entry) in enumerate(zip(prompt.ids, prompt.entries)):
        tokens.append(tok.token_text(token_id))
        offsets.append(len(tok.decode(prompt.ids[:i])))
        if entry is None:
            token_logprobs.append(None)
            top.append(None)
            continue
        logprob, best = entry
        token_logprobs.append(logprob)
        alternatives = {tok.token_text(t): lp for t, lp in best}
        alternatives.setdefault(tokens[-1], logprob)
        top.append(alternatives)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}
