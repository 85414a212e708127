"""`POST /generate` and `POST /generate_stream` (text-generation-inference's API), per-request adapters.

TGI's parameters are honoured as TGI does: `truncate` keeps the last N prompt tokens (before the input
limit is checked), `return_full_text` prepends the prompt to `generated_text`, `typical_p` is typical
decoding, `top_n_tokens` returns the most likely tokens of each step, `grammar` constrains the output
(server/guided.py), and `best_of` samples that many sequences (seeds seed, seed+1, ...) and returns the one
with the highest cumulative logprob, the others in `details.best_of_sequences` (sampling only, not streamed,
as TGI). Documented ones not implemented are a 422 (`GenerateParameters.unsupported`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..deps import EngineDep, SettingsDep
from ..engine import Engine, FinishEvent, RequestHandle, TokenEvent
from ..errors import InvalidInputError, error_payload
from ..generation import (
    Completed,
    build_request,
    cumulative_logprob,
    make_guide,
    run_all_to_completion,
    sse,
    stream_events,
    submit_choices,
)
from ..guided import tgi_grammar
from ..sampling import SamplingParams
from ..schemas import (
    BestOfSequence,
    Details,
    GenerateRequest,
    GenerateResponse,
    StreamEvent,
    refuse_unsupported,
)
from ..settings import Settings
from ..tokenization import Tokenization
from .logprobs import tgi_prefill, tgi_token, tgi_top_tokens

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
) -> list[RequestHandle]:
    p = body.parameters
    if p.decoder_input_details and streaming:
        raise InvalidInputError(
            "decoder_input_details is not supported when streaming tokens: TGI's stream events have no field "
            "for the prompt's tokens (TGI refuses it too); ask /generate for them, or drop it"
        )
    refuse_unsupported(p.unsupported())
    if body.stream is not None and body.stream != streaming:
        route = "/generate_stream" if body.stream else "/generate"
        raise InvalidInputError(f"`stream: {str(body.stream).lower()}` asks for {route}; send it there")
    sampling = SamplingParams.from_request(
        do_sample=p.do_sample,
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        typical_p=p.typical_p,
        repetition_penalty=p.repetition_penalty,
        seed=p.seed,
        top_logprobs=p.top_n_tokens or 0,
        guide=await make_guide(engine, tgi_grammar(p.grammar.model_dump() if p.grammar else None)),
    )
    best_of = p.best_of or 1
    if best_of > 1 and not sampling.do_sample:
        raise InvalidInputError(
            "best_of > 1 needs sampling (do_sample, or a temperature, top_k, top_p or typical_p): greedy "
            "candidates would all be the same"
        )
    if best_of > 1 and streaming:
        raise InvalidInputError("best_of > 1 cannot stream: the best sequence is known only at the end")
    request = build_request(
        settings,
        engine,
        _input_ids(body, settings, engine),
        adapter=p.adapter_id,
        sampling=sampling,
        max_new_tokens=p.max_new_tokens,
        stop=p.stop,
        prompt_logprobs=p.decoder_input_details,
    )
    return await submit_choices(engine, request, best_of)


def _details(tok: Tokenization, finish: FinishEvent, tokens: list[TokenEvent], top_n: bool) -> Details:
    return Details(
        prefill=tgi_prefill(tok, tokens[0].prompt if tokens else None),
        finish_reason=finish.finish_reason,
        generated_tokens=finish.generated_tokens,
        seed=finish.seed,
        tokens=[tgi_token(t) for t in tokens],
        top_tokens=[tgi_top_tokens(tok, t) for t in tokens] if top_n else None,
    )


@router.post("/generate", response_model=GenerateResponse, response_model_exclude_none=True)
async def generate(body: GenerateRequest, request: Request, settings: SettingsDep, engine: EngineDep):
    """Generate a continuation of `inputs` with the adapter `parameters.adapter_id` (null = base model)."""
    handles = await _submit(body, settings, engine, streaming=False)
    results = await run_all_to_completion(request, handles)
    best = max(results, key=cumulative_logprob) if len(results) > 1 else results[0]
    assert best.finish is not None
    details = None
    p = body.parameters
    if p.details:
        top_n = bool(p.top_n_tokens)
        details = _details(engine.tok, best.finish, best.tokens, top_n)
        if len(results) > 1:
            details.best_of_sequences = [
                _best_of_sequence(engine.tok, body, other, top_n) for other in results if other is not best
            ]
    return GenerateResponse(generated_text=_full_text(body, best.finish.generated_text), details=details)


def _best_of_sequence(
    tok: Tokenization, body: GenerateRequest, done: Completed, top_n: bool
) -> BestOfSequence:
    assert done.finish is not None
    details = _details(tok, done.finish, done.tokens, top_n)
    return BestOfSequence(
        generated_text=_full_text(body, done.finish.generated_text),
        finish_reason=details.finish_reason,
        generated_tokens=details.generated_tokens,
        seed=details.seed,
        tokens=details.tokens,
        top_tokens=details.top_tokens,
    )


@router.post("/generate_stream")
async def generate_stream(
    body: GenerateRequest, settings: SettingsDep, engine: EngineDep
) -> StreamingResponse:
    """Server-Sent Events: one event per token; the last event also carries `generated_text`."""
    # Errors before the stream starts get their own status.
    (handle,) = await _submit(body, settings, engine, streaming=True)
    top_n = bool(body.parameters.top_n_tokens)

    def event_of(index: int, token: TokenEvent) -> StreamEvent:
        top = tgi_top_tokens(engine.tok, token) if top_n else []
        return StreamEvent(index=index, token=tgi_token(token), top_tokens=top)

    async def events() -> AsyncIterator[bytes]:
        index = 0
        tokens: list[TokenEvent] = []
        async for event in stream_events(handle):
            if isinstance(event, TokenEvent):
                tokens.append(event)
                if not event.final:  # the last token waits for its FinishEvent (same engine step)
                    yield sse(event_of(index, event).model_dump_json())
                    index += 1
            elif isinstance(event, FinishEvent):
                details = _details(engine.tok, event, tokens, top_n) if body.parameters.details else None
                last = event_of(index, tokens[-1])
                last.generated_text = _full_text(body, event.generated_text)
                last.details = details
                yield sse(last.model_dump_json(exclude_none=True))
            else:
                yield sse(_error_json(event.error))

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _error_json(exc: BaseException) -> str:
    _, payload = error_payload(exc)
    return json.dumps(payload)
