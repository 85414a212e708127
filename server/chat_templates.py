"""Chat prompts under an adapter's own chat template (store/templates.py), else the base tokenizer's.

    ids = await chat_input_ids(engine, "fr", messages)     # "fr"'s template if its files carry one

The template is the one of the adapter version a short lease finds current (loading the adapter if needed:
an unknown adapter is a 404 here, before anything else). `/v1/chat/completions` and `/tokenize` with
`messages` both build their prompt here, so that what /tokenize counts is what the chat route runs.
"""

from __future__ import annotations

from typing import Any

import jinja2

from .engine import Engine
from .engine.types import release_lease
from .errors import BadRequestError, InvalidInputError


async def adapter_chat_template(engine: Engine, adapter: str | None) -> str | None:
    """`adapter`'s own chat template, or None when it has none (or for the base model)."""
    if adapter is None:
        return None
    lease = await engine.registry.acquire(adapter)  # 404 unknown; loads it if needed
    try:
        return lease.chat_template if lease is not None else None
    finally:
        release_lease(lease)


async def chat_input_ids(
    engine: Engine,
    adapter: str | None,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    add_special_tokens: bool = False,
) -> list[int]:
    """Token ids of a chat under `adapter`'s template (else the base's), ending with the assistant's turn
    prompt when `add_generation_prompt`. The template writes BOS itself when it wants one, so special
    tokens are not added again unless asked."""
    template = await adapter_chat_template(engine, adapter)
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
