"""Structured output: a request's grammar (JSON schema, any JSON object, regex) as a per-row token mask.

The library is llguidance (guidance-ai; what vLLM, SGLang and llama.cpp use): a Rust Earley parser with a
lexer over the tokenizer's trie that computes a row's allowed tokens in tens of microseconds on the CPU, with
no per-grammar precompilation over the whole vocabulary (outlines-core builds an index up front, seconds for
a large vocabulary) and a single wheel with no dependencies (xgrammar pulls in a TVM FFI runtime).

Each row owns an `LLMatcher` (RowSampler.matcher). Before a step the matchers of the guided rows fill one
int32 bitmask (G, ceil(V/32)) on the host, which goes to the device in one copy and is unpacked there into a
(G, V) bool mask applied to the scores before the warpers (server/sampling.py). After the step each guided
row's matcher consumes the token drawn. When the grammar is complete the matcher allows only EOS, so the
output ends with the model's EOS like any other ("stop").
"""

from __future__ import annotations

import json
from typing import Any

import llguidance
import llguidance.hf
import torch

from .errors import InvalidInputError


class Guide:
    """A request's compiled grammar and the tokenizer it runs over; makes one matcher per row."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, grammar: str, what: str) -> None:
        problem = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
        if problem:
            raise InvalidInputError(f"the {what} cannot be used for structured output: {problem}")
        self.tokenizer = tokenizer
        self.grammar = grammar
        self.what = what

    def matcher(self) -> llguidance.LLMatcher:
        matcher = llguidance.LLMatcher(self.tokenizer, self.grammar, log_level=0)
        if matcher.is_error():
            raise InvalidInputError(f"the {self.what} cannot be used: {matcher.get_error()}")
        return matcher


def guide_tokenizer(hf_tokenizer: Any, vocab_size: int) -> llguidance.LLTokenizer:
    """llguidance's view of a fast Hugging Face tokenizer over the model's `vocab_size` logits (~1 s: cache
    it, as Tokenization.guide_tokenizer does). 422 for a tokenizer llguidance cannot read."""
    try:
        return llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size)
    except ValueError as exc:  # a slow tokenizer, or one whose decoder llguidance cannot map to bytes
        raise InvalidInputError(
            f"structured output cannot read this base model's tokenizer ({exc}): it needs a fast tokenizer "
            "with a byte-level, byte-fallback or metaspace decoder; leave out response_format / grammar"
        ) from None


def json_schema_grammar(schema: dict[str, Any] | str) -> str:
    """llguidance grammar of a JSON schema (compact separators: the model cannot pad forever)."""
    try:
        return str(llguidance.LLMatcher.grammar_from_json_schema(schema))
    except ValueError as exc:
        raise InvalidInputError(f"the JSON schema is not a JSON object: {exc}") from None


def openai_response_format(fmt: dict[str, Any] | None) -> tuple[str, str] | None:
    """(grammar, description) of OpenAI's `response_format`, None for plain text; 422 for a bad one."""
    kind = None if fmt is None else fmt.get("type")
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return json_schema_grammar({"type": "object"}), "response_format json_object"
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise InvalidInputError(
                'response_format json_schema needs {"json_schema": {"name": ..., "schema": {...}}}'
            )
        return json_schema_grammar(spec["schema"]), "response_format json_schema"
    raise InvalidInputError(
        f"response_format type {kind!r} is not one of 'text', 'json_object', 'json_schema'"
    )


def tgi_grammar(grammar: dict[str, Any] | None) -> tuple[str, str] | None:
    """(grammar, description) of TGI's `grammar` ({"type": "json" | "regex", "value": ...}); 422 if bad."""
    if grammar is None:
        return None
    kind, value = grammar.get("type"), grammar.get("value")
    if kind in ("json", "json_object"):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"grammar value is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise InvalidInputError('grammar type "json" needs a JSON schema object as its value')
        return json_schema_grammar(value), "JSON schema grammar"
    if kind == "regex":
        if not isinstance(value, str) or not value:
            raise InvalidInputError('grammar type "regex" needs a non-empty regular expression as its value')
        return str(llguidance.LLMatcher.grammar_from_regex(value)), "regex grammar"
    raise InvalidInputError(f"grammar type {kind!r} is not one of 'json', 'regex'")


# -- the batched mask -------------------------------------------------------------------------------------
def fill_bitmasks(matchers: list[Any], vocab: int) -> torch.Tensor:
    """(G, ceil(V/32)) int32 on the host: bit v of row g is set when matchers[g] allows token v (none for a
    matcher in its error state)."""
    bits = torch.full(((len(matchers)), (vocab + 31) // 32), -1, dtype=torch.int32)
    for g, matcher in enumerate(matchers):
        row = bits[g]
        try:  # raises if the logits' width is not the vocabulary the guide was built for
            matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
        except ValueError:
            row.zero_()
        if matcher.is_error():  # allows nothing: that row alone fails (sampling.py's "nothing allowed")
            row.zero_()
    return bits


def unpack_bitmask(bits: torch.Tensor, vocab: int) -> torch.Tensor:
    """(G, ceil(V/32)) int32 -> (G, V) bool, on the bits' device. Token v is bit v % 32 of word v // 32."""
    token = torch.arange(vocab, device=bits.device)
    return ((bits[:, token // 32] >> (token % 32)) & 1).bool()
