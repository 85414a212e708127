"""`POST /generate` and `POST /generate_stream` (text-generation-inference's API), per-request adapters."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..deps import EngineDep, SettingsDep
from ..engine import Engine, FinishEvent, RequestHandle, TokenEvent
from ..errors import error_payload
from ..generation import build_request, run_to_completion, sse, stream_events, submit_generate
from ..sampling import SamplingParams
from ..schemas import Details, GenerateRequest, GenerateResponse, StreamEvent, TokenInfo
from ..settings import Settings

router = APIRouter(tags=["generate"])


async def _submit(body: GenerateRequest, settings: Settings, engine: Engine) -> RequestHandle:
    p = body.parameters
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
        engine.tok.encode(body.inputs),
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
    handle = await _submit(body, settings, engine)
    done = await run_to_completion(request, handle)
    assert done.finish is not None
    details = _details(done.finish, done.tokens) if body.parameters.details else None
    return GenerateResponse(generated_text=done.finish.generated_text, details=details)


@router.post("/generate_stream")
async def generate_stream(
    body: GenerateRequest, settings: SettingsDep, engine: EngineDep
) -> StreamingResponse:
    """Server-Sent Events: one event per token; the last event also carries `generated_text`."""
    handle = await _submit(body, settings, engine)  # errors before the stream starts get their own status

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
                    generated_text=event.generated_text,
                    details=details,
                )
                yield sse(last.model_dump_json(exclude_none=True))
            else:
                yield sse(_error_json(event.error))

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _error_json(exc: BaseException) -> str:
    _, payload = error_payload(exc)
    return json.dumps(payload)
