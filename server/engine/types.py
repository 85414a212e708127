"""What handlers hand to the engine and what comes back: requests, events, and the handle between them.

The engine thread never touches asyncio objects directly: it calls `RequestHandle.push`, which hands the
event to the handler's event loop with `loop.call_soon_threadsafe`. A handler that loses its client calls
`cancel()`; the engine frees the row at its next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..errors import BadRequestError
from ..sampling import SamplingParams
from ..store import Lease

FinishReason = Literal["length", "eos_token", "stop_sequence"]
_ids = itertools.count()


@dataclass
class GenerationRequest:
    """One prompt to continue, with its adapter (its public name; None = base model) and how to pick tokens.

    `lease` pins the version of `adapter` the request runs on (taken before it is queued); the engine runs
    that version (`model_name`) and releases the lease when the row leaves.
    """

    input_ids: list[int]
    adapter: str | None
    sampling: SamplingParams
    max_new_tokens: int
    stop: list[str] = field(default_factory=list)
    lease: Lease | None = None
    # The prompt tokens' logprobs too (echo / decoder_input_details; decoder-only bases).
    prompt_logprobs: bool = False
    group: int | None = None  # rows of one request's `n` / `best_of`: they share the prompt's prefill

    @property
    def model_name(self) -> str | None:
        return leased_model_name(self.adapter, self.lease)


def leased_model_name(adapter: str | None, lease: Lease | None) -> str | None:
    """The name the model knows the leased version of `adapter` by (None = the base model). An adapter
    without a lease is an error, never the base model."""
    if lease is None:
        if adapter is not None:
            raise RuntimeError(f"a request for adapter {adapter!r} reached the engine without its lease")
        return None
    return lease.model_name


def release_lease(lease: Lease | None) -> None:
    """End a request's adapter lease (idempotent, callable from the engine thread)."""
    if lease is not None:
        lease.release()


@dataclass
class TokenEvent:
    """One generated token: its id, the text it adds to the output, and its logprob."""

    token_id: int
    text: str
    logprob: float
    special: bool
    final: bool = False  # the request's last token: a FinishEvent follows at once
    top: tuple[tuple[int, float], ...] = ()  # the request's `top_logprobs` best (id, logprob), best first
    # The row's first token, with `prompt_logprobs`: the prompt's logprobs, all known once its prefill has
    # ended, before this token was sampled (so a stream can send them in its first chunk, as vLLM does).
    prompt: PromptLogprobs | None = None


PromptLogprob = tuple[float, tuple[tuple[int, float], ...]]


@dataclass(frozen=True)
class PromptLogprobs:
    """The prompt's logprobs (`GenerationRequest.prompt_logprobs`): per prompt token `ids[i]`, `entries[i]` is
    None for the first (nothing predicts it), else its (logprob, top) as a TokenEvent's (top: the request's
    `top_logprobs` best (id, logprob), best first)."""

    ids: list[int]
    entries: list[PromptLogprob | None]


@dataclass
class FinishEvent:
    """The request ended: the whole text and why it stopped."""

    finish_reason: FinishReason
    generated_text: str
    generated_tokens: int
    prompt_tokens: int
    seed: int | None


@dataclass
class ErrorEvent:
    error: BaseException


class RequestCancelledError(BadRequestError):
    """The request was cancelled (its client went away) before it finished: its handler stops waiting."""

    def __init__(self) -> None:
        super().__init__("the request was cancelled: its client disconnected before the answer was complete")


Event = TokenEvent | FinishEvent | ErrorEvent


class RequestHandle:
    """The bridge between one handler (asyncio) and the engine thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_cancel: Callable[[], None] | None = None) -> None:
        self.id = next(_ids)
        self.loop = loop
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        # Told after `cancelled` is set (the engine then looks for cancelled rows in its queue, and only then).
        self.on_cancel = on_cancel
        self._cancelled = False  # set on the event loop, read by the engine thread (a plain bool is enough)
        self.submitted_at = time.perf_counter()
        self.first_token_at: float | None = None

    def push(self, event: Event) -> None:
        """Called from the engine thread."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the handler's loop has closed (server shutting down): nobody to tell
            self.cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @cancelled.setter
    def cancelled(self, value: bool) -> None:
        was, self._cancelled = self._cancelled, value
        if value and not was and self.on_cancel is not None:
            self.on_cancel()

    def cancel(self) -> None:
        self.cancelled = True

    async def events(self) -> AsyncIterator[Event]:
        """Yield events until the request finishes or fails (the last event is a FinishEvent/ErrorEvent)."""
        while True:
            event = await self.queue.get()
            yield event
            if not isinstance(event, TokenEvent):
                return


@dataclass
class ClassifyJob:
    """Texts (or images) to classify, or texts to embed, with one adapter (its public name; None = base model)
    under `lease`, as for a `GenerationRequest`; the result is one tensor per input: logits (C,) — or (C, h, w)
    for segmentation — for `task` "classify", the pooled hidden state (d,) for "embed" (`pooling` None: the
    base kind's default, adapters_core/multi/pooling.py)."""

    input_ids: list[list[int]]
    adapter: str | None
    future: asyncio.Future[list[torch.Tensor]]
    loop: asyncio.AbstractEventLoop
    submitted_at: float = field(default_factory=time.perf_counter)
    lease: Lease | None = None
    task: Literal["classify", "embed"] = "classify"
    pooling: str | None = None
    # Images instead of texts (image bases): (N, C, H, W), as the base's image processor makes them.
    pixel_values: torch.Tensor | None = None

    @property
    def model_name(self) -> str | None:
        return leased_model_name(self.adapter, self.lease)

    @property
    def rows(self) -> int:
        """Inputs in the job: texts, or images."""
        return len(self.pixel_values) if self.pixel_values is not None else len(self.input_ids)

    @property
    def cancelled(self) -> bool:
        return self.future.done()

    def resolve(self, logits: list[torch.Tensor] | BaseException) -> None:
        """Called from the engine thread."""

        def _set() -> None:
            if self.future.done():
                return
            if isinstance(logits, BaseException):
                self.future.set_exception(logits)
            else:
                self.future.set_result(logits)

        with contextlib.suppress(RuntimeError):  # loop closed: the server is shutting down
            self.loop.call_soon_threadsafe(_set)
