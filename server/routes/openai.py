"""OpenAI-compatible routes: `/v1/completions`, `/v1/chat/completions` (tokenizers with a chat template) and
`/v1/models`. The adapter is named by `model`; the base model's own name means no adapter.

Sampling follows OpenAI: `temperature` defaults to 1 (sampling) and 0 means greedy. Stop sequences are cut
from the returned text, streamed or not. `echo` (completions) prepends the prompt; `stream_options.
include_usage` adds a last chunk with the usage. Documented parameters not implemented yet are a 422
(`unsupported()` in schemas.py), never silently ignored.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..chat_templates import chat_input_ids
from ..deps import EngineDep, SettingsDep
from ..engine import Engine, FinishEvent, RequestHandle, TokenEvent
from ..errors import InvalidInputError, error_payload
from ..generation import (
    StopTrimmer,
    build_request,
    run_to_completion,
    sse,
    stream_events,
    submit_generate,
    trim_at_stop,
)
from ..sampling import SamplingParams
from ..schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    refuse_unsupported,
)
from ..settings import Settings

router = APIRouter(prefix="/v1", tags=["openai"])
FINISH = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}


async def _submit(
    body: CompletionRequest | ChatCompletionRequest, input_ids: list[int], settings: Settings, engine: Engine
) -> tuple[RequestHandle, list[str]]:
    refuse_unsupported(body.unsupported())
    adapter = engine.registry.resolve_model(body.model)
    try:
        stops = body.stop_list()
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    greedy = body.temperature == 0
    sampling = SamplingParams(
        do_sample=not greedy,
        temperature=1.0 if greedy or body.temperature is None else body.temperature,
        top_k=body.top_k,
        top_p=body.top_p,
        repetition_penalty=body.repetition_penalty,
        seed=body.seed,
    )
    request = build_request(
        settings,
        engine,
        input_ids,
        adapter=adapter,
        sampling=sampling,
        max_new_tokens=body.max_completion_tokens or body.max_tokens,
        stop=stops,
    )
    return await submit_generate(engine, request), stops


def _usage(finish: FinishEvent) -> dict[str, int]:
    return {
        "prompt_tokens": finish.prompt_tokens,
        "completion_tokens": finish.generated_tokens,
        "total_tokens": finish.prompt_tokens + finish.generated_tokens,
    }


async def _stream(
    handle: RequestHandle,
    stops: list[str],
    chunk: Any,
    *,
    include_usage: bool = False,
    prefix: str = "",
) -> AsyncIterator[bytes]:
    """OpenAI chunk stream: `chunk(text, finish_reason)` builds each payload; ends with `data: [DONE]`.

    `prefix` (echo) is the first chunk's text. With `include_usage`, every chunk carries `usage: null` and a
    last chunk with no choices carries the usage (OpenAI's `stream_options`)."""
    usage: dict[str, Any] = {"usage": None} if include_usage else {}
    if prefix:
        yield sse(json.dumps({**chunk(prefix, None), **usage}))
    trimmer = StopTrimmer(stops)
    async for event in stream_events(handle):
        if isinstance(event, TokenEvent):
            text = trimmer.push(event.text)
            if text:
                yield sse(json.dumps({**chunk(text, None), **usage}))
        elif isinstance(event, FinishEvent):
            rest = trimmer.finish()
            yield sse(json.dumps({**chunk(rest, FINISH[event.finish_reason]), **usage}))
            if include_usage:
                yield sse(json.dumps({**chunk("", None), "choices": [], "usage": _usage(event)}))
        else:
            _, payload = error_payload(event.error)
            yield sse(json.dumps(payload))
    yield b"data: [DONE]\n\n"


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request, settings: SettingsDep, engine: EngineDep):
    """Text completion of `prompt` under adapter `model`."""
    handle, stops = await _submit(body, engine.tok.encode(body.prompt), settings, engine)
    meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
    if body.stream:

        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            return {**meta, "object": "text_completion", "choices": [choice]}

        prefix = body.prompt if body.echo else ""
        stream = _stream(handle, stops, chunk, include_usage=body.include_usage, prefix=prefix)
        return StreamingResponse(stream, media_type="text/event-stream")
    done = await run_to_completion(request, handle)
    assert done.finish is not None
    text = trim_at_stop(done.finish.generated_text, stops)
    if body.echo:
        text = body.prompt + text
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": FINISH[done.finish.finish_reason]}
    return {**meta, "object": "text_completion", "choices": [choice], "usage": _usage(done.finish)}


@router.post("/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, settings: SettingsDep, engine: EngineDep
):
    """Chat completion, the prompt built by the tokenizer's chat template (400 when it has none)."""
    messages = [m.model_dump(exclude_none=True) for m in body.messages]  # `name` only when given
    # The adapter's own chat template when its files carry one (chat_templates.py), else the base's.
    input_ids = await chat_input_ids(engine, engine.registry.resolve_model(body.model), messages)
    handle, stops = await _submit(body, input_ids, settings, engine)
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
    if body.stream:
        first = True

        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            nonlocal first
            delta: dict[str, str] = {"content": text}
            if first:
                delta["role"], first = "assistant", False
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**meta, "object": "chat.completion.chunk", "choices": [choice]}

        stream = _stream(handle, stops, chunk, include_usage=body.include_usage)
        return StreamingResponse(stream, media_type="text/event-stream")
    done = await run_to_completion(request, handle)
    assert done.finish is not None
    message = {"role": "assistant", "content": trim_at_stop(done.finish.generated_text, stops)}
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": FINISH[done.finish.finish_reason],
    }
    return {**meta, "object": "chat.completion", "choices": [choice], "usage": _usage(done.finish)}


@router.get("/models", response_model=ModelList)
async def models(engine: EngineDep) -> ModelList:
    """The base model and every loaded adapter, with type, rank and where its weights are resident."""
    registry = engine.registry
    base = ModelCard(
        id=registry.base_name,
        created=engine.started_at,
        type="base",
        task_type=engine.base.kind,
        resident=registry.resident,
    )
    cards = [base] + [
        ModelCard(
            id=info.name,
            created=int(info.loaded_at or engine.started_at),
            type=info.method or "unknown",  # known once first loaded (adapters register lazily)
            task_type=info.task_type,
            rank=info.rank,
            resident=registry.resident if info.tier == "device" else info.tier,
            source=info.source,
            parent=registry.base_name,
            tier=info.tier,
            size_bytes=info.size_bytes,
            content_hash=info.content_hash,
        )
        for info in registry.infos()
    ]
    return ModelList(data=cards)
