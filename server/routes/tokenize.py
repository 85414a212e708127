"""`POST /tokenize` and `POST /detokenize`, in vLLM's shapes, with `model` naming an adapter.

Tokens come from the base model's tokenizer (adapters share its vocabulary: PEFT adapters do not resize
it); a chat (`messages`) goes through the adapter's own chat template when its files carry one
(chat_templates.py), exactly as /v1/chat/completions builds its prompt. An unknown adapter is a 404.
"""

from __future__ import annotations

from fastapi import APIRouter

from ..chat_templates import chat_input_ids
from ..deps import EngineDep
from ..engine import Engine
from ..engine.types import release_lease
from ..errors import InvalidInputError
from ..schemas_utility import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse

router = APIRouter(tags=["tokenize"])


def max_model_len(engine: Engine) -> int:
    """The most positions one request may take here: prompt + completion for a causal LM (the total limit),
    the input for the others (their outputs have positions of their own)."""
    limits = engine.limits
    return limits.max_total_tokens if engine.base.kind == "causal-lm" else limits.max_input_tokens


def check_token_ids(engine: Engine, ids: list[int], what: str = "tokens") -> None:
    """422 naming the first id outside the vocabulary (it would index past the embedding table)."""
    size = len(engine.tok.tokenizer)
    bad = next((i for i in ids if i >= size), None)
    if bad is not None:
        raise InvalidInputError(f"{what}: token id {bad} is outside the vocabulary (ids are 0..{size - 1})")


@router.post("/tokenize", response_model=TokenizeResponse, response_model_exclude_none=True)
async def tokenize(body: TokenizeRequest, engine: EngineDep) -> TokenizeResponse:
    """The prompt's (or chat's) token ids, their count and the server's length limit."""
    adapter = None if body.model is None else engine.registry.resolve_model(body.model)
    lease = await engine.registry.acquire(adapter)  # the one check of the adapter: 404 when unknown
    try:
        if body.messages is not None:
            messages = [m.model_dump(exclude_none=True) for m in body.messages]
            ids = chat_input_ids(
                engine,
                lease,
                messages,
                add_generation_prompt=body.add_generation_prompt,
                add_special_tokens=bool(body.add_special_tokens),
            )
        else:
            assert body.prompt is not None  # the schema asks for exactly one of prompt and messages
            special = True if body.add_special_tokens is None else body.add_special_tokens
            ids = engine.tok.encode(body.prompt, add_special_tokens=special)
    finally:
        release_lease(lease)
    strs = engine.tok.tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=max_model_len(engine), tokens=ids, token_strs=strs)


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, engine: EngineDep) -> DetokenizeResponse:
    """The text of `tokens`, special tokens included (what /tokenize gave, back)."""
    adapter = None if body.model is None else engine.registry.resolve_model(body.model)
    release_lease(await engine.registry.acquire(adapter))  # 404 when unknown
    check_token_ids(engine, body.tokens)
    return DetokenizeResponse(prompt=str(engine.tok.tokenizer.decode(body.tokens, skip_special_tokens=False)))
