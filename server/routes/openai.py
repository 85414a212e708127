"""OpenAI-compatible routes: `/v1/completions`, `/v1/chat/completions` (tokenizers with a chat template) and
`/v1/models`. The adapter is named by `model`; the base model's own name means no adapter.

Sampling follows OpenAI: `temperature` defaults to 1 (sampling) and 0 means greedy. Stop sequences are cut
from the returned text, streamed or not. `echo` (completions) prepends the prompt; `stream_options.
include_usage` adds a last chunk with the usage. `n` choices (and completions' `best_of` candidates, ranked by
cumulative logprob) are rows of their own with seeds seed, seed+1, ... (vLLM). `logprobs` are the model's raw
log-softmax (routes/logprobs.py); `echo` with `logprobs` adds the prompt's, streamed too (in each choice's first
chunk, as vLLM). `response_format` constrains the output with a grammar (server/guided.py).
vLLM's `stop_token_ids`, `ignore_eos` and `min_tokens` are honoured. Documented parameters not implemented
are a 422 (`unsupported()` in schemas.py), never silently ignored.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..chat_templates import chat_input_ids
from ..deps import EngineDep, SettingsDep
from ..engine import Engine, FinishEvent, RequestHandle, TokenEvent
from ..engine.types import release_lease
from ..errors import InvalidInputError, error_payload
from ..generation import (
    Completed,
    StopTrimmer,
    build_request,
    cumulative_logprob,
    make_guide,
    run_all_to_completion,
    sse,
    stream_all,
    submit_choices,
    trim_at_stop,
)
from ..guided import openai_response_format
from ..sampling import SamplingParams
from ..schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    refuse_unsupported,
)
from ..settings import Settings
from ..store import Lease
from .logprobs import chat_logprobs, completion_logprobs, echo_logprobs

router = APIRouter(prefix="/v1", tags=["openai"])
FINISH = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}
# chunk(index, text, finish_reason, the tokens this chunk carries) -> the chunk's payload
ChunkBuilder = Callable[[int, str, str | None, list[TokenEvent]], dict[str, Any]]


async def _submit(
    body: CompletionRequest | ChatCompletionRequest,
    input_ids: list[int],
    settings: Settings,
    engine: Engine,
    *,
    rows: int,
    top_logprobs: int = 0,
    grammar: tuple[str, str] | None = None,
    prompt_logprobs: bool = False,
    held: Lease | None = None,
) -> tuple[list[RequestHandle], list[str]]:
    """Queue the body's `rows` choices of `input_ids`; `held`: the caller's lease on the adapter, which the
    rows share (`submit_choices`), else they acquire it once."""
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
        top_logprobs=top_logprobs,
        min_tokens=body.min_tokens,
        ignore_eos=body.ignore_eos,
        stop_token_ids=frozenset(body.stop_token_ids or ()),
        guide=await make_guide(engine, grammar),
    )
    request = build_request(
        settings,
        engine,
        input_ids,
        adapter=adapter,
        sampling=sampling,
        max_new_tokens=body.max_completion_tokens or body.max_tokens,
        stop=stops,
        prompt_logprobs=prompt_logprobs,
    )
    return await submit_choices(engine, request, rows, held=held), stops


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """Prompt tokens once, completion tokens of every returned choice (as vLLM counts `n`)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _best(results: list[Completed], n: int) -> list[Completed]:
    """The n candidates with the highest cumulative logprob (all of them, in order, when there are n)."""
    if len(results) == n:
        return results
    return sorted(results, key=cumulative_logprob, reverse=True)[:n]


async def _stream(
    handles: list[RequestHandle],
    stops: list[str],
    chunk: ChunkBuilder,
    *,
    include_usage: bool = False,
    with_logprobs: bool = False,
    prefix: str = "",
    prompt_chunk: Callable[[int, TokenEvent], dict[str, Any]] | None = None,
) -> AsyncIterator[bytes]:
    """OpenAI chunk stream of every choice, interleaved as their tokens come; ends with `data: [DONE]`.

    `prefix` (echo) is each choice's first chunk. With the prompt's logprobs (echo with logprobs) that chunk
    is `prompt_chunk(index, first token's event)` instead, sent just before the first token's: the prompt's
    logprobs ride on that event (vLLM streams them in the first chunk too). With `with_logprobs` every token
    gets a chunk that carries its logprobs (its text may be held back by the stop trimmer). With
    `include_usage`, every chunk carries `usage: null` and a last chunk with no choices carries the usage
    (OpenAI's `stream_options`)."""
    usage: dict[str, Any] = {"usage": None} if include_usage else {}
    trimmers = [StopTrimmer(stops) for _ in handles]
    if prefix and prompt_chunk is None:
        for i in range(len(handles)):
            yield sse(json.dumps({**chunk(i, prefix, None, []), **usage}))
    prompt_tokens, completion_tokens = 0, 0
    async for i, event in stream_all(handles):
        if isinstance(event, TokenEvent):
            if prompt_chunk is not None and event.prompt is not None:  # the choice's first token
                yield sse(json.dumps({**prompt_chunk(i, event), **usage}))
            text = trimmers[i].push(event.text)
            if text or with_logprobs:
                yield sse(json.dumps({**chunk(i, text, None, [event]), **usage}))
        elif isinstance(event, FinishEvent):
            rest = trimmers[i].finish()
            yield sse(json.dumps({**chunk(i, rest, FINISH[event.finish_reason], []), **usage}))
            prompt_tokens = event.prompt_tokens
            completion_tokens += event.generated_tokens
        else:
            _, payload = error_payload(event.error)
            yield sse(json.dumps(payload))
            break  # one failed choice fails the request: the others are cancelled
    else:
        if include_usage:
            last = {
                **chunk(0, "", None, []),
                "choices": [],
                "usage": _usage(prompt_tokens, completion_tokens),
            }
            yield sse(json.dumps(last))
    yield b"data: [DONE]\n\n"


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request, settings: SettingsDep, engine: EngineDep):
    """Text completion of `prompt` under adapter `model`."""
    prompt_logprobs = body.echo and body.logprobs is not None
    best_of = body.best_of or body.n
    if best_of < body.n:
        raise InvalidInputError(f"best_of ({best_of}) must be at least n ({body.n})")
    if best_of > body.n and body.stream:
        raise InvalidInputError("best_of > n cannot stream: the best candidates are known only at the end")
    handles, stops = await _submit(
        body,
        engine.tok.encode(body.prompt),
        settings,
        engine,
        rows=best_of,
        top_logprobs=body.logprobs or 0,
        prompt_logprobs=prompt_logprobs,
    )
    meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
    with_logprobs = body.logprobs is not None
    prefix = body.prompt if body.echo else ""
    if body.stream:
        offsets = [len(prefix)] * best_of  # where each choice's next token starts in its text (text_offset)

        def payload(index: int, text: str, finish: str | None, logprobs: Any) -> dict[str, Any]:
            choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
            return {**meta, "object": "text_completion", "choices": [choice]}

        def chunk(index: int, text: str, finish: str | None, events: list[TokenEvent]) -> dict[str, Any]:
            if not with_logprobs:
                return payload(index, text, finish, None)
            logprobs = completion_logprobs(engine.tok, events, offsets[index])
            offsets[index] += sum(len(e.text) for e in events)
            return payload(index, text, finish, logprobs)

        def prompt_chunk(index: int, first: TokenEvent) -> dict[str, Any]:
            assert first.prompt is not None
            return payload(index, prefix, None, echo_logprobs(engine.tok, first.prompt))

        stream = _stream(
            handles,
            stops,
            chunk,
            include_usage=body.include_usage,
            with_logprobs=with_logprobs,
            prefix=prefix,
            prompt_chunk=prompt_chunk if prompt_logprobs else None,
        )
        return StreamingResponse(stream, media_type="text/event-stream")
    results = _best(await run_all_to_completion(request, handles), body.n)
    choices, finishes = [], []
    for index, done in enumerate(results):
        assert done.finish is not None
        finishes.append(done.finish)
        text = trim_at_stop(done.finish.generated_text, stops)
        logprobs = completion_logprobs(engine.tok, done.tokens, len(prefix)) if with_logprobs else None
        if logprobs is not None and prompt_logprobs:
            assert done.tokens[0].prompt is not None  # max_tokens >= 1: the first token carries them
            echoed = echo_logprobs(engine.tok, done.tokens[0].prompt)
            logprobs = {key: echoed[key] + logprobs[key] for key in logprobs}
        finish = FINISH[done.finish.finish_reason]
        choices.append({"index": index, "text": prefix + text, "logprobs": logprobs, "finish_reason": finish})
    usage = _usage(finishes[0].prompt_tokens, sum(f.generated_tokens for f in finishes))
    return {**meta, "object": "text_completion", "choices": choices, "usage": usage}


@router.post("/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, settings: SettingsDep, engine: EngineDep
):
    """Chat completion, the prompt built by the tokenizer's chat template (400 when it has none)."""
    if body.top_logprobs and not body.logprobs:
        raise InvalidInputError("top_logprobs needs logprobs: true")
    messages = [m.model_dump(exclude_none=True) for m in body.messages]  # `name` only when given
    # One lease for the adapter's own chat template (chat_templates.py; else the base's) and the generation:
    # the prompt and the weights are of one version.
    lease = await engine.registry.acquire(engine.registry.resolve_model(body.model))
    try:
        handles, stops = await _submit(
            body,
            chat_input_ids(engine, lease, messages),
            settings,
            engine,
            rows=body.n,
            top_logprobs=(body.top_logprobs or 0) if body.logprobs else 0,
            grammar=openai_response_format(body.response_format),
            held=lease,
        )
    finally:
        release_lease(lease)  # every queued row holds its own share
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
    with_logprobs = bool(body.logprobs)
    if body.stream:
        started = [False] * body.n

        def chunk(index: int, text: str, finish: str | None, events: list[TokenEvent]) -> dict[str, Any]:
            delta: dict[str, str] = {"content": text}
            if not started[index]:
                delta["role"], started[index] = "assistant", True
            logprobs = chat_logprobs(engine.tok, events) if with_logprobs else None
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return {**meta, "object": "chat.completion.chunk", "choices": [choice]}

        stream = _stream(handles, stops, chunk, include_usage=body.include_usage, with_logprobs=with_logprobs)
        return StreamingResponse(stream, media_type="text/event-stream")
    results = await run_all_to_completion(request, handles)
    choices, finishes = [], []
    for index, done in enumerate(results):
        assert done.finish is not None
        finishes.append(done.finish)
        message = {"role": "assistant", "content": trim_at_stop(done.finish.generated_text, stops)}
        logprobs = chat_logprobs(engine.tok, done.tokens) if with_logprobs else None
        finish = FINISH[done.finish.finish_reason]
        choices.append({"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish})
    usage = _usage(finishes[0].prompt_tokens, sum(f.generated_tokens for f in finishes))
    return {**meta, "object": "chat.completion", "choices": choices, "usage": usage}


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
