"""Chat prompts under an adapter's own chat template (store/templates.py), else the base tokenizer's.

    lease = await engine.registry.acquire("fr")             # 404 unknown; loads it if needed
    ids = chat_input_ids(engine, lease, messages)           # "fr"'s template if its files carry one

The template is the leased version's: `/v1/chat/completions` takes one lease for the template and hands it on
to its rows (`submit_choices(held=...)`), so the prompt and the weights come from the same version, acquired
once. `/tokenize` with `messages` builds its prompt here too, so that what it counts is what the chat route runs.
"""

from __future__ import annotations

from typing import Any

import jinja2

from .engine import Engine
from .errors import BadRequestError, InvalidInputError
from .store import Lease


def chat_input_ids(
    engine: Engine,
    lease: Lease | None,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    add_special_tokens: bool = False,
) -> list[int]:
    """Token ids of a chat under the leased adapter's template (else the base's; `lease` None: the base
    model), ending with the assistant's turn prompt when `add_generation_prompt`. The template writes BOS
    itself when it wants one, so special tokens are not added again unless asked."""
    template = lease.chat_template if lease is not None else None
    tokenizer = engine.tok.tokenizer
    if template is None and not getattr(tokenizer, "chat_template", None):
        raise BadRequestError(
            "neither the base model's tokenizer nor this adapter has a chat template, so chat prompts are "
            "unavailable; use /v1/completions or /generate with a plain prompt."
        )
    try:
        text = tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except jinja2.TemplateError as exc:  # e.g. the template's raise_exception on a role order it refuses
        raise InvalidInputError(f"the chat template refused these messages: {exc}") from None
    return engine.tok.encode(str(text), add_special_tokens=add_special_tokens)
