"""The base model's tokenizer: encode prompts, decode streams incrementally, apply a chat template.

`/v1/chat/completions` exists only when the tokenizer has a chat template; without one the route answers 400
instead of guessing a prompt format.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import AutoTokenizer

from .errors import BadRequestError, InvalidInputError


class Tokenization:
    """Wraps a Hugging Face tokenizer with what the server needs."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        eos = tokenizer.eos_token_id
        self.eos_token_ids: set[int] = set() if eos is None else {int(eos)}
        self.special_ids: set[int] = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}

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
    """Decodes one row's generated ids as they arrive, giving each step's new text.

    Decoding the whole sequence each time is what makes word-piece spacing and multi-byte characters come out
    right; text that ends in an incomplete UTF-8 sequence ('\ufffd') is held back until the next token.
    """

    def __init__(self, tokenization: Tokenization) -> None:
        self._tok = tokenization
        self.ids: list[int] = []
        self.text = ""

    def push(self, token_id: int) -> str:
        """Append a token; return the text it adds (possibly empty)."""
        self.ids.append(token_id)
        full = self._tok.decode(self.ids)
        if full.endswith("\ufffd") or not full.startswith(self.text):
            return ""
        new, self.text = full[len(self.text) :], full
        return new

    def flush(self) -> str:
        """Whatever was held back, at the end of the sequence."""
        full = self._tok.decode(self.ids)
        new = full[len(self.text) :] if full.startswith(self.text) else ""
        self.text = full
        return new
