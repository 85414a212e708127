"""What the generate-style routes share: turning a body into an engine request within the limits, and
awaiting or streaming its events with disconnect handling.

Limits live here and in the engine (schemas.py checks what a value may be, these check how much): input
tokens, max_new_tokens, total tokens (the engine's `TokenLimits`: the settings' clamped to the base's context),
stop sequences — each a 422 naming the limit and its flag. The positions an adapter adds (virtual tokens,
prefix) are known once its lease is held: `Engine.submit_generate` checks them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request

from .engine import (
    Engine,
    ErrorEvent,
    FinishEvent,
    GenerationRequest,
    RequestCancelledError,
    RequestHandle,
    TokenEvent,
)
from .engine.types import release_lease
from .errors import BadRequestError, InvalidInputError
from .sampling import SamplingParams
from .settings import Settings


def check_kind(engine: Engine, *kinds: str) -> None:
    """400 when the base model cannot serve this route (e.g. /classify on a causal LM)."""
    if engine.base.kind not in kinds:
        raise BadRequestError(
            f"the served base model is a {engine.base.kind} model; this route needs a "
            f"{' or '.join(kinds)} base model"
        )


def build_request(
    settings: Settings,
    engine: Engine,
    input_ids: list[int],
    *,
    adapter: str | None,
    sampling: SamplingParams,
    max_new_tokens: int | None,
    stop: list[str],
) -> GenerationRequest:
    """Check every limit (422), then build the engine request; the adapter is checked once, when its lease is
    taken (`submit_generate`).

    The token limits are checked here without the adapter's virtual tokens (so that an over-long prompt never
    waits for an adapter to load), and again with them when the request is queued.
    """
    check_kind(engine, "causal-lm", "seq2seq-lm")
    if not input_ids:
        raise InvalidInputError("inputs tokenize to no tokens; give a non-empty prompt")
    new_tokens = engine.limits.default_new_tokens if max_new_tokens is None else max_new_tokens
    engine.limits.check(len(input_ids), new_tokens)
    if len(stop) > settings.max_stop_sequences:
        raise InvalidInputError(
            f"{len(stop)} stop sequences given; at most {settings.max_stop_sequences} are allowed "
            "(--max-stop-sequences)"
        )
    return GenerationRequest(
        input_ids=input_ids, adapter=adapter, sampling=sampling, max_new_tokens=new_tokens, stop=stop
    )


async def submit_generate(engine: Engine, request: GenerationRequest) -> RequestHandle:
    """Take a lease on the request's adapter (404 unknown, 4xx invalid; waiting for its load if it is not
    resident), then queue it (422 if the positions the adapter adds take it over a token limit).

    From here the engine owns the lease and releases it when the row leaves the batch; the request runs on
    the adapter version that was current now, even if the adapter is re-uploaded meanwhile.
    """
    lease = request.lease = await engine.registry.acquire(request.adapter)
    try:
        return engine.submit_generate(request, asyncio.get_running_loop())
    except BaseException:
        release_lease(lease)  # never queued: nobody else will release it
        raise


@dataclass
class Completed:
    """Every event of a finished request."""

    tokens: list[TokenEvent] = field(default_factory=list)
    finish: FinishEvent | None = None


async def _until_disconnect(request: Request) -> None:
    """Return when the client disconnects. The body has been read, so the next ASGI message is the
    disconnect (as Starlette's StreamingResponse listens for it)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _collect(handle: RequestHandle) -> Completed:
    done = Completed()
    async for event in handle.events():
        if isinstance(event, TokenEvent):
            done.tokens.append(event)
        elif isinstance(event, FinishEvent):
            done.finish = event
        else:
            raise event.error
    return done


async def run_to_completion(request: Request, handle: RequestHandle) -> Completed:
    """Await the whole generation, racing it against the client's disconnect: a client that goes away
    cancels its row and its handler ends at once (RequestCancelledError), rather than waiting for events
    nobody will read while it counts as in flight (a drain would wait for it)."""
    events = asyncio.ensure_future(_collect(handle))
    gone = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({events, gone}, return_when=asyncio.FIRST_COMPLETED)
        if events.done():
            return events.result()
        raise RequestCancelledError()
    finally:
        handle.cancel()  # no-op once finished; frees the row if we leave early
        for task in (events, gone):
            task.cancel()
        await asyncio.gather(events, gone, return_exceptions=True)


async def stream_events(handle: RequestHandle) -> AsyncIterator[TokenEvent | FinishEvent | ErrorEvent]:
    """The handle's events; when the response is torn down (client gone) the row is cancelled."""
    try:
        async for event in handle.events():
            yield event
    finally:
        handle.cancel()


def sse(data: str) -> bytes:
    """One Server-Sent Event."""
    return f"data: {data}\n\n".encode()


class StopTrimmer:
    """Streams text without ever showing a stop sequence (OpenAI semantics: the stop is not returned).

    Text that could still be the start of a stop sequence is held back until the next piece decides it.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        self.pending += text
        cut = trim_at_stop(self.pending, self.stops)
        if len(cut) < len(self.pending):  # a stop sequence is complete: emit what precedes it, then nothing
            self.stopped, self.pending = True, ""
            return cut
        keep = max(0, len(self.pending) - self.hold)
        out, self.pending = self.pending[:keep], self.pending[keep:]
        return out

    def finish(self) -> str:
        """What was held back, at the end of the stream."""
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


def trim_at_stop(text: str, stops: list[str]) -> str:
    """`text` up to (not including) the earliest stop sequence."""
    positions = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(positions)] if positions else text
