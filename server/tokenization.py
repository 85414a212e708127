"""The base model's tokenizer: encode prompts, decode streams incrementally, apply a chat template.

`/v1/chat/completions` exists only when the tokenizer has a chat template; without one the route answers 400
instead of guessing a prompt format.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenizers.decoders import DecodeStream
from transformers import AutoTokenizer

from .errors import BadRequestError, InvalidInputError


class Tokenization:
    """Wraps a Hugging Face tokenizer with what the server needs."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        eos = tokenizer.eos_token_id
        self.eos_token_ids: set[int] = set() if eos is None else {int(eos)}
        self.special_ids: set[int] = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
        self._guide_tokenizers: dict[int, Any] = {}

    @property
    def backend(self) -> Any:
        """The Rust tokenizer of a fast tokenizer (None for a slow one)."""
        return getattr(self.tokenizer, "backend_tokenizer", None) if self.is_fast else None

    @property
    def is_fast(self) -> bool:
        return bool(getattr(self.tokenizer, "is_fast", False))

    @property
    def streams(self) -> bool:
        """Whether `DecodeStream` gives exactly `decode`'s text: a fast tokenizer that does not clean up
        spaces after decoding (DecodeStream runs the decoder only)."""
        return self.backend is not None and not getattr(self.tokenizer, "clean_up_tokenization_spaces", False)

    def token_text(self, token_id: int) -> str:
        """One token's own text, special tokens included (logprob entries name tokens this way)."""
        return str(self.tokenizer.decode([token_id], skip_special_tokens=False))

    def guide_tokenizer(self, vocab_size: int) -> Any:
        """llguidance's tokenizer over `vocab_size` logits, built once (~1 s) on first structured request."""
        if vocab_size not in self._guide_tokenizers:
            from .guided import guide_tokenizer

            self._guide_tokenizers[vocab_size] = guide_tokenizer(self.tokenizer, vocab_size)
        return self._guide_tokenizers[vocab_size]

    @classmethod
    def from_pretrained(cls, path: str, revision: str | None = None) -> Tokenization:
        return cls(AutoTokenizer.from_pretrained(path, revision=revision))

    def add_eos_ids(self, ids: int | Sequence[int] | None) -> None:
        """Also stop on the model's own EOS ids (generation_config may list several)."""
        if ids is None:
            return
        self.eos_token_ids |= {int(ids)} if isinstance(ids, int) else {int(i) for i in ids}

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        _check_unicode(text)
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat, ending with the assistant's turn prompt."""
        if not self.has_chat_template:
            raise BadRequestError(
                "this base model's tokenizer has no chat template, so /v1/chat/completions is unavailable; "
                "use /v1/completions or /generate with a plain prompt."
            )
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # The template writes BOS itself when it wants one; do not add another.
        return self.encode(str(text), add_special_tokens=False)


def _check_unicode(text: str) -> None:
    """The schemas refuse lone surrogates already; this keeps any other caller from the tokenizer's
    TypeError (a 500) on text that is not valid Unicode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"the text holds a lone surrogate at index {exc.start}, which is not valid Unicode; send UTF-8"
        ) from None


class IncrementalDecoder:
    """Decodes one row's generated ids as they arrive, giving each step's new text, in O(1) per token.

    A fast tokenizer streams through tokenizers' `DecodeStream` (it keeps a window of the last few ids and
    holds back a piece that ends in an incomplete UTF-8 sequence). Other tokenizers — slow ones, and fast
    ones whose `decode` also cleans up spaces, which `DecodeStream` does not — use the same window by hand
    (vLLM's prefix/read offsets): decode ids[prefix:] and ids[prefix:read], emit the difference, and move the
    window on once it holds complete text. Either way the concatenated pieces equal `decode(ids)`, and the
    work per token does not grow with the output (tests/server/test_detokenize.py counts it).
    """

    def __init__(self, tokenization: Tokenization) -> None:
        self._tok = tokenization
        self.ids: list[int] = []
        self._pieces: list[str] = []
        self._stream = DecodeStream(skip_special_tokens=True) if tokenization.streams else None
        self._prefix = 0  # fallback window: ids[_prefix:_read] decode to text already emitted
        self._read = 0

    @property
    def text(self) -> str:
        """Everything emitted so far (joined once, then kept joined)."""
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def push(self, token_id: int) -> str:
        """Append a token; return the text it adds (possibly empty)."""
        self.ids.append(token_id)
        if self._stream is not None:
            piece = self._stream.step(self._tok.backend, token_id) or ""
        else:
            piece = self._window_step()
        if piece:
            self._pieces.append(piece)
        return piece

    def _window_step(self) -> str:
        before = self._tok.decode(self.ids[self._prefix : self._read])
        after = self._tok.decode(self.ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # nothing yet, or an incomplete character: wait for the next token
        self._prefix, self._read = self._read, len(self.ids)
        return after[len(before) :]

    def flush(self) -> str:
        """Whatever was held back, at the end of the sequence (one full decode, once per request)."""
        full = self._tok.decode(self.ids)
        text = self.text
        new = full[len(text) :] if full.startswith(text) else ""
        if new:
            self._pieces.append(new)
        return new
