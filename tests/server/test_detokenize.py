"""Incremental detokenization (issue 16.6): the streamed pieces equal the full decode for byte-level splits of
multi-byte characters, with `DecodeStream` (fast tokenizers) and with the window fallback, and the work per
token does not grow with the output (counted, not timed)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from bytelevel import build_bytelevel_tokenizer
from serve_helpers import build_tokenizer

from server.tokenization import IncrementalDecoder, Tokenization

TRICKY = [
    "héllo wörld — naïve café",
    "中文字符 🙂🚀 emoji 👩‍👩‍👧 mixed",
    '{"a": "ß", "b": [1, 2]}\n\ttabs   and  spaces',
]


class Counting:
    """A tokenizer wrapper that counts `decode` calls and the ids they decode."""

    def __init__(self, tokenizer: Any) -> None:
        self._inner = tokenizer
        self.calls = 0
        self.ids_decoded = 0

    def decode(self, ids: list[int], **kwargs: Any) -> str:
        self.calls += 1
        self.ids_decoded += len(ids)
        return str(self._inner.decode(ids, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _NoStream(Tokenization):
    streams = False  # type: ignore[assignment]


def _decoder(streams: bool) -> tuple[IncrementalDecoder, Counting]:
    counting = Counting(build_bytelevel_tokenizer())
    tok = Tokenization(counting) if streams else _NoStream(counting)
    assert tok.streams is streams
    return IncrementalDecoder(tok), counting


def _streamed(decoder: IncrementalDecoder, ids: list[int]) -> str:
    return "".join(decoder.push(i) for i in ids) + decoder.flush()


@pytest.mark.parametrize("streams", [True, False], ids=["DecodeStream", "window"])
@pytest.mark.parametrize("text", TRICKY)
def test_streamed_text_equals_the_full_decode(streams: bool, text: str) -> None:
    decoder, counting = _decoder(streams)
    ids = counting._inner(text)["input_ids"]
    pieces = [decoder.push(i) for i in ids]
    assert "".join(pieces) + decoder.flush() == text == decoder.text
    assert all("\ufffd" not in p for p in pieces)  # a split character is held back, never shown broken


@pytest.mark.parametrize("streams", [True, False], ids=["DecodeStream", "window"])
@pytest.mark.parametrize("seed", range(4))
def test_random_ids_with_broken_utf8_and_specials_equal_the_full_decode(streams: bool, seed: int) -> None:
    decoder, counting = _decoder(streams)
    ids = torch.randint(
        0, len(counting._inner), (80,), generator=torch.Generator().manual_seed(seed)
    ).tolist()
    assert _streamed(decoder, ids) == counting._inner.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("streams", [True, False], ids=["DecodeStream", "window"])
def test_work_per_token_does_not_grow_with_the_output(streams: bool) -> None:
    decoder, counting = _decoder(streams)
    ids = counting._inner(" ".join(TRICKY) * 20)["input_ids"]  # several hundred tokens
    assert len(ids) > 400
    per_token = []
    for i in ids:
        before = counting.ids_decoded
        decoder.push(i)
        per_token.append(counting.ids_decoded - before)
    if streams:
        assert counting.calls == 0  # DecodeStream: no full decode while streaming
    else:
        # The window holds the ids of the last emitted piece and those held back since: a few, however
        # long the output (re-decoding everything made this grow to len(ids)).
        assert max(per_token) <= 16, max(per_token)
        assert max(per_token[-100:]) <= max(per_token[:100]) + 4


def test_word_level_tokenizer_streams_with_its_spaces() -> None:
    """The served tests' WordLevel tokenizer (no decoder: words joined by spaces) streams exactly too."""
    tok = Tokenization(build_tokenizer())
    ids = tok.encode("w1 w2 w3 w4 </s> w5", add_special_tokens=False)
    decoder = IncrementalDecoder(tok)
    assert _streamed(decoder, ids) == tok.decode(ids)
