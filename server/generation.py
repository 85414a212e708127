"""What the generate-style routes share: turning a body into an engine request within the limits, and
awaiting or streaming its events with disconnect handling.

Limits live here and in the engine (schemas.py checks what a value may be, these check how much): input
tokens, max_new_tokens, total tokens (the engine's `TokenLimits`: the settings' clamped to the base's context),
stop sequences — each a 422 naming the limit and its flag. The positions an adapter adds (virtual tokens,
prefix) are known once its lease is held: `Engine.submit_generate` checks them.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

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
from .guided import Guide
from .sampling import SamplingParams
from .settings import Settings
from .store import Lease

_groups = itertools.count()


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
    prompt_logprobs: bool = False,
) -> GenerationRequest:
    """Check every limit (422), then build the engine request; the adapter is checked once, when its lease is
    taken (`submit_choices`). The model's EOS ids join `sampling` here (min_tokens masks them).

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
    if sampling.min_tokens > new_tokens:
        raise InvalidInputError(
            f"min_tokens {sampling.min_tokens} is more than the {new_tokens} tokens the request may generate "
            "(max_tokens / max_new_tokens)"
        )
    vocab = vocab_size(engine)
    bad_ids = sorted(i for i in sampling.stop_token_ids if not 0 <= i < vocab)
    if bad_ids:
        raise InvalidInputError(
            f"stop_token_ids {bad_ids} are not token ids of this model (0 to {vocab - 1})"
        )
    if sampling.guide is not None and sampling.ignore_eos:
        raise InvalidInputError(
            "ignore_eos cannot be combined with structured output: the output ends with EOS when the "
            "grammar is complete"
        )
    sampling = replace(sampling, eos_token_ids=frozenset(engine.tok.eos_token_ids))
    return GenerationRequest(
        input_ids=input_ids,
        adapter=adapter,
        sampling=sampling,
        max_new_tokens=new_tokens,
        stop=stop,
        prompt_logprobs=prompt_logprobs,
    )


def vocab_size(engine: Engine) -> int:
    """Width of the model's logits (the token ids it can produce)."""
    return int(engine.base.config.vocab_size)


async def make_guide(engine: Engine, spec: tuple[str, str] | None) -> Guide | None:
    """The request's structured-output guide from (grammar, description), or None. Built off the event loop:
    the first one converts the tokenizer for llguidance (about a second), a large schema takes a while."""
    if spec is None:
        return None
    grammar, what = spec
    tokenizer = await asyncio.to_thread(engine.tok.guide_tokenizer, vocab_size(engine))
    return await asyncio.to_thread(Guide, tokenizer, grammar, what)


def choice_requests(request: GenerationRequest, count: int) -> list[GenerationRequest]:
    """`count` rows of one prompt (OpenAI `n` / `best_of`, TGI `best_of`). Sampled rows take seeds seed,
    seed+1, ... (vLLM's derived seeds) when a seed is given, else each its own random seed; greedy rows are
    identical (vLLM allows that too). They share the prompt's prefill: one `group` (engine/siblings.py)."""
    seed = request.sampling.seed
    group = next(_groups) if count > 1 else None
    return [
        replace(
            request,
            sampling=replace(request.sampling, seed=None if seed is None else (seed + i) % 2**63),
            stop=list(request.stop),
            group=group,
        )
        for i in range(count)
    ]


async def submit_choices(
    engine: Engine, request: GenerationRequest, count: int, *, held: Lease | None = None
) -> list[RequestHandle]:
    """Queue `count` rows of `request` under one acquire of its adapter (404 unknown, 4xx invalid; waiting
    for its load if it is not resident): each row runs under its own share of that lease, so every row runs
    the same version. `held`: a lease on the adapter that the caller holds already (the chat route took it
    for the adapter's template) and still releases itself; the rows share it instead of acquiring again.
    If one row cannot be queued, the others are cancelled and its error is the answer."""
    lease = held if held is not None else await engine.registry.acquire(request.adapter)
    handles: list[RequestHandle] = []
    try:
        for row in choice_requests(request, count):
            handles.append(_queue(engine, row, lease.share() if lease is not None else None))
    except BaseException:
        for handle in handles:
            handle.cancel()
        raise
    finally:
        if held is None:
            release_lease(lease)  # each queued row holds its own share
    return handles


def _queue(engine: Engine, request: GenerationRequest, lease: Lease | None) -> RequestHandle:
    """Queue one row under `lease` (422 if the positions the adapter adds take it over a token limit).

    From here the engine owns the lease and releases it when the row leaves the batch; the row runs on the
    adapter version that was current when it was acquired, even if the adapter is re-uploaded meanwhile.
    """
    request.lease = lease
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
    return (await run_all_to_completion(request, [handle]))[0]


async def run_all_to_completion(request: Request, handles: list[RequestHandle]) -> list[Completed]:
    """`run_to_completion` for the rows of one request (`n`, `best_of`): the first row to fail fails the
    request, and every row is cancelled when the client goes away."""

    async def collect_all() -> list[Completed]:
        return list(await asyncio.gather(*(_collect(h) for h in handles)))

    events: asyncio.Future[Any] = asyncio.ensure_future(collect_all())
    gone: asyncio.Future[Any] = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({events, gone}, return_when=asyncio.FIRST_COMPLETED)
        if events.done():
            return list(events.result())
        raise RequestCancelledError()
    finally:
        for handle in handles:
            handle.cancel()  # no-op once finished; frees the row if we leave early
        for task in (events, gone):
            task.cancel()
        await asyncio.gather(events, gone, return_exceptions=True)


def cumulative_logprob(done: Completed) -> float:
    """What `best_of` ranks candidates by: the sum of the generated tokens' logprobs (vLLM, TGI)."""
    return sum(t.logprob for t in done.tokens)


async def stream_events(handle: RequestHandle) -> AsyncIterator[TokenEvent | FinishEvent | ErrorEvent]:
    """The handle's events; when the response is torn down (client gone) the row is cancelled."""
    try:
        async for event in handle.events():
            yield event
    finally:
        handle.cancel()


async def stream_all(
    handles: list[RequestHandle],
) -> AsyncIterator[tuple[int, TokenEvent | FinishEvent | ErrorEvent]]:
    """(row index, event) of several rows as they arrive (OpenAI `n` streams its choices interleaved);
    when the response is torn down every row is cancelled."""
    queue: asyncio.Queue[tuple[int, TokenEvent | FinishEvent | ErrorEvent]] = asyncio.Queue()

    async def pump(index: int, handle: RequestHandle) -> None:
        async for event in handle.events():
            await queue.put((index, event))

    tasks = [asyncio.ensure_future(pump(i, h)) for i, h in enumerate(handles)]
    try:
        open_rows = len(handles)
        while open_rows:
            index, event = await queue.get()
            if not isinstance(event, TokenEvent):
                open_rows -= 1
            yield index, event
    finally:
        for handle in handles:
            handle.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


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
