"""`POST /generate` and `POST /generate_stream` (text-generation-inference's API), per-request adapters.

TGI's parameters are honoured as TGI does: `truncate` keeps the last N prompt tokens (before the input
limit is checked), `return_full_text` prepends the prompt to `generated_text`. Documented ones not
implemented yet are a 422 (`GenerateParameters.unsupported`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..deps import EngineDep, SettingsDep
from ..engine import Engine, FinishEvent, RequestHandle, TokenEvent
from ..errors import InvalidInputError, error_payload
from ..generation import build_request, run_to_completion, sse, stream_events, submit_generate
from ..sampling import SamplingParams
from ..schemas import (
    Details,
    GenerateRequest,
    GenerateResponse,
    StreamEvent,
    TokenInfo,
    refuse_unsupported,
)
from ..settings import Settings

router = APIRouter(tags=["generate"])


def _input_ids(body: GenerateRequest, settings: Settings, engine: Engine) -> list[int]:
    """The prompt's tokens, truncated to the last `truncate` of them when asked (TGI)."""
    ids = engine.tok.encode(body.inputs)
    truncate = body.parameters.truncate
    if truncate is None:
        return ids
    if truncate > settings.max_input_tokens:
        raise InvalidInputError(
            f"truncate {truncate} is over the input limit of {settings.max_input_tokens} tokens "
            "(--max-input-tokens)"
        )
    return ids[-truncate:]


def _full_text(body: GenerateRequest, generated: str) -> str:
    return body.inputs + generated if body.parameters.return_full_text else generated


async def _submit(
    body: GenerateRequest, settings: Settings, engine: Engine, *, streaming: bool
) -> RequestHandle:
    p = body.parameters
    refuse_unsupported(p.unsupported())
    if body.stream is not None and body.stream != streaming:
        route = "/generate_stream" if body.stream else "/generate"
        raise InvalidInputError(f"`stream: {str(body.stream).lower()}` asks for {route}; send it there")
    sampling = SamplingParams.from_request(
        do_sample=p.do_sample,
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        repetition_penalty=p.repetition_penalty,
        seed=p.seed,
    )
    request = build_request(
        settings,
        engine,
        _input_ids(body, settings, engine),
        adapter=p.adapter_id,
        sampling=sampling,
        max_new_tokens=p.max_new_tokens,
        stop=p.stop,
    )
    return await submit_generate(engine, request)


def _token_info(event: TokenEvent) -> TokenInfo:
    return TokenInfo(id=event.token_id, text=event.text, logprob=event.logprob, special=event.special)


def _details(finish: FinishEvent, tokens: list[TokenEvent]) -> Details:
    return Details(
        finish_reason=finish.finish_reason,
        generated_tokens=finish.generated_tokens,
        seed=finish.seed,
        tokens=[_token_info(t) for t in tokens],
    )


@router.post("/generate", response_model=GenerateResponse, response_model_exclude_none=True)
async def generate(body: GenerateRequest, request: Request, settings: SettingsDep, engine: EngineDep):
    """Generate a continuation of `inputs` with the adapter `parameters.adapter_id` (null = base model)."""
    handle = await _submit(body, settings, engine, streaming=False)
    done = await run_to_completion(request, handle)
    assert done.finish is not None
    details = _details(done.finish, done.tokens) if body.parameters.details else None
    return GenerateResponse(generated_text=_full_text(body, done.finish.generated_text), details=details)


@router.post("/generate_stream")
async def generate_stream(
    body: GenerateRequest, settings: SettingsDep, engine: EngineDep
) -> StreamingResponse:
    """Server-Sent Events: one event per token; the last event also carries `generated_text`."""
    # Errors before the stream starts get their own status.
    handle = await _submit(body, settings, engine, streaming=True)

    async def events() -> AsyncIterator[bytes]:
        index = 0
        tokens: list[TokenEvent] = []
        async for event in stream_events(handle):
            if isinstance(event, TokenEvent):
                tokens.append(event)
                if not event.final:  # the last token waits for its FinishEvent (same engine step)
                    yield sse(StreamEvent(index=index, token=_token_info(event)).model_dump_json())
                    index += 1
            elif isinstance(event, FinishEvent):
                details = _details(event, tokens) if body.parameters.details else None
                last = StreamEvent(
                    index=index,
                    token=_token_info(tokens[-1]),
                    generated_text=_full_text(body, event.generated_text),
                    details=details,
                )
                yield sse(last.model_dump_json(exclude_none=True))
            else:
                yield sse(_error_json(event.error))

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _error_json(exc: BaseException) -> str:
    _, payload = error_payload(exc)
    return json.dumps(payload)
