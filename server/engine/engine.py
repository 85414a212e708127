"""The engine: an actor thread that owns the queue, the running batch and the model state.

Handlers call `submit_generate` / `submit_classify` / `submit_embed` from the event loop and await events;
they never touch the model. The thread repeats one step, a short named pipeline (engine/paged_path.py):

    schedule  drop finished and cancelled rows, pick this step's work (engine/scheduler.py)
    classify  run waiting classification and embedding jobs, one dynamic batch per kind (engine/jobs.py)
    forward   one `model.paged_step` over the step's packed tokens (engine/paged.py builds its StepPlan)
    sample    pick the next token of each row whose stream the step completed, with its own sampler
    emit      send tokens, detect EOS / stop sequences / length, send finish events

One engine core serves every generating base (causal LMs, and encoder-decoders, whose rows' streams are their
decoders' and whose prompts go to the encoder once at admission: adapters_core/paged/seq2seq.py): a token
budget per step (`--max-batch-tokens`), decodes first, then prefill chunks; rows hold blocks of a paged KV cache
(`--kv-cache-bytes`, `--kv-block-size`), shared by prompt prefixes of the same adapter version; when blocks run
out a row is preempted and recomputed later. A generating base the paged core does not cover
(`model.paged_support()` names the reason: MPT's and Baichuan's ALiBi) is refused at `start()`: the server does
not start, rather than serve it some other way.

Waiting requests are admitted in the fair order of engine/fairness.py (S-LoRA's virtual token counter). The
rows of one request's `n` / `best_of` compute its prompt once (engine/siblings.py), and a row that asks for its
prompt's logprobs gets every prompt position's logits (`SeqChunk.all_logits`) and takes no prefix-cache hit.

So a new request joins between two steps and a finished row leaves before the next one: nobody waits for
anybody else to finish. A client that disconnects sets `cancelled`; its row leaves at the next schedule
with a last `ErrorEvent(RequestCancelledError)`, so whoever still awaits its events stops waiting.

A per-row failure (sampling, stop handling, detokenization, pushing its event) fails that row alone: it gets
an `ErrorEvent`, releases its lease and leaves at the next schedule; the step goes on for the others. A
failed step is run again chunk by chunk, so that only the rows at fault fail. A row's KV blocks go back to the
pool when it leaves.

`hold()` is an explicit hook for tests and operations: no step starts while it is held, so a test can fill
the queue or put requests into one step deterministically, without waiting on the clock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from adapters_core.errors import UnsupportedError
from adapters_core.multi.layers import warm_up_kernels

from ..adapters import AdapterRegistry
from ..errors import (
    NotReadyError,
    QueueFullError,
    UnsupportedParameterError,
    status_of,
)
from ..metrics import Metrics
from ..modeling import LoadedBase
from ..sampling import Pick, RowSampler
from ..tokenization import IncrementalDecoder, Tokenization
from .batch import Row
from .fairness import TenantQueue, VirtualTokenCounter
from .jobs import JobQueue
from .limits import TokenLimits, prompt_positions
from .paged import PagedBatch, PagingConfig
from .paged_path import PagedPath
from .siblings import SiblingGroups
from .types import (
    ClassifyJob,
    ErrorEvent,
    GenerationRequest,
    RequestCancelledError,
    RequestHandle,
    release_lease,
)

log = logging.getLogger("swapyard.engine")
GENERATING = ("causal-lm", "seq2seq-lm")  # the base kinds whose rows generate (on the paged core)
IDLE_WAIT_S = 0.5  # the thread sleeps on a condition; this only bounds how late it notices a stop


class Engine(JobQueue, PagedPath):
    """Continuous batching over a MultiAdapterModel: `paged_step`, `classify` and `embed`."""

    def __init__(
        self,
        base: LoadedBase,
        registry: AdapterRegistry,
        *,
        max_batch_size: int,
        max_queued_requests: int,
        limits: TokenLimits,
        metrics: Metrics | None = None,
        paging: PagingConfig | None = None,
    ) -> None:
        self.base = base
        self.registry = registry
        self.model: Any = base.model
        self.tok: Tokenization = base.tokenization
        self.device = base.device
        self.metrics = metrics or Metrics()
        self.max_batch_size = max_batch_size
        self.max_queued_requests = max_queued_requests
        # The token limits in force (the settings', clamped to the base's context by build_engine).
        self.limits = limits
        self._waiting: TenantQueue[Row] = TenantQueue()  # rows per tenant kept counted (engine/fairness.py)
        # Handles cancelled so far, and as of the last look through the queue: a step scans the queue for
        # cancelled rows only when a cancel came since (a flood's backlog is not read every step).
        self._cancels = 0
        self._cancels_seen = 0
        self._classify: collections.deque[ClassifyJob] = collections.deque()
        self.paging = paging or PagingConfig()
        self.fairness = VirtualTokenCounter()
        self.siblings = SiblingGroups()  # rows of one `n` waiting for their leader's prompt (siblings.py)
        # The running rows and their KV blocks: made at start() for a generating base, else None.
        self._batch: PagedBatch | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._holds = 0  # hold() depth: no step starts while > 0
        self._step_lock = threading.Lock()  # held by the thread for each step (hold() waits on it)
        self.draining = False
        # Held for each step: the adapter store changes the model's pools only between steps.
        self.model_lock = registry.model_lock
        self.started_at = int(time.time())
        # Charged with each request's token cost as it is queued; raises to refuse it (server/ratelimit.py).
        self.rate_limit: Callable[[int], None] = lambda cost: None

    # -- lifecycle ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def start(self) -> None:
        """Allocate the KV pool (generating bases) and start the thread. A generating base the paged core does
        not cover is refused here (UnsupportedError, naming the base and why): the server does not start."""
        if self.base.kind in GENERATING:
            reason = self.model.paged_support()
            if reason is not None:
                raise UnsupportedError(
                    f"cannot serve {type(self.model.model).__name__}: {reason} Swapyard generates on its paged "
                    "engine only; serve a base of the tested architectures (docs/architectures.md), or run "
                    "this one through the library (MultiAdapterModel.generate)."
                )
            self._batch = PagedBatch(
                self.model,
                self.paging,
                self.fairness,
                device=self.device,
                max_rows=self.max_batch_size,
                max_total=self.limits.max_total_tokens,
            )
            self._observe_blocks()
        if self.device.type == "cuda":  # compile every kernel variant now, not inside a step (issue 18)
            # The most tokens a forward can carry: a paged step's budget, or a classify/embed job's padded rows.
            tokens = max(
                self.paging.batch_tokens(self.device), self.max_batch_size * self.limits.max_total_tokens
            )
            log.info("warmed up %d kernel variants", warm_up_kernels(self.model, tokens))
        if self._batch is not None:  # after the kernels: a capture's warm-up then compiles nothing
            self._start_decode_graphs()
        self._thread = threading.Thread(target=self._run, name="swapyard-engine", daemon=True)
        self._thread.start()

    def _running_rows(self) -> list[Row]:
        return self._batch.rows if self._batch is not None else []

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; every request still waiting or running gets a 503 error event."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        gone = NotReadyError("the server is shutting down")
        for row in [*self._waiting, *self.siblings.followers(), *self._running_rows()]:
            row.handle.push(ErrorEvent(gone))
            release_lease(row.request.lease)
        for job in self._classify:
            job.resolve(gone)
            release_lease(job.lease)
        self._waiting.clear()
        self._classify.clear()
        if self._batch is not None:
            self._batch.clear()

    @contextlib.contextmanager
    def hold(self) -> Iterator[EngineHold]:
        """Pause the loop between steps: on entry the step in progress (if any) has ended and no other starts
        until exit. Requests are still accepted and queue up (or get 429). A hook for tests: fill the queue,
        or put several requests into one step, without depending on timing."""
        with self._cond:
            self._holds += 1
        try:
            with self._step_lock:  # the step in progress, if any, ends; the thread starts no other
                pass
            yield EngineHold(self)
        finally:
            with self._cond:
                self._holds -= 1
                self._cond.notify_all()

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Block until nothing is queued or running (every finished row has left and given its blocks back);
        TimeoutError after `timeout` seconds — a safety net against a hang, not a timing assumption. A hook for
        tests: never call it under `hold()`, where no step runs."""
        with self._cond:
            if not self._cond.wait_for(lambda: not self._has_work(), timeout):
                raise TimeoutError("the engine never went idle")

    # -- submitting (event loop side) --------------------------------------------------------------------
    def _admit_check(self) -> None:
        # Draining refuses new requests at the HTTP layer (InflightMiddleware); one accepted before it began
        # (say, waiting for its adapter to load) is still queued and served.
        if not self.running:
            raise NotReadyError("the engine is not running (starting up or shutting down); retry shortly")
        if len(self._waiting) + len(self._classify) >= self.max_queued_requests:
            self.metrics.rejected.labels("queue_full").inc()
            raise QueueFullError(
                f"{self.max_queued_requests} requests are already waiting; retry later "
                "(the limit is --max-queued-requests)"
            )

    def submit_generate(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> RequestHandle:
        """Queue a generation; its events arrive on the returned handle. 422 if the request crosses a token
        limit counting the positions its adapter adds (resident: the caller holds its lease)."""
        virtual = prompt_positions(self.model, request.model_name)
        self.limits.check(len(request.input_ids), request.max_new_tokens, virtual)
        batch = self._batch
        if batch is None:  # not started, or a base that does not generate (its routes refuse first)
            self._admit_check()
            raise UnsupportedParameterError(f"this {self.base.kind} base does not generate text")
        if request.prompt_logprobs and batch.encoder_decoder:
            raise UnsupportedParameterError(
                "the prompt's logprobs (echo with logprobs, decoder_input_details) score a decoder-only model's "
                "prompt; an encoder-decoder's prompt is its encoder's input, which it does not score; drop them"
            )
        handle = RequestHandle(loop, on_cancel=self._note_cancel)
        seq = batch.new_seq(handle.id, request.input_ids, request.model_name, request.prompt_logprobs)
        batch.check_fits(seq, request.max_new_tokens)
        row = Row(
            request,
            handle,
            RowSampler(request.sampling, request.input_ids),
            IncrementalDecoder(self.tok),
            seq,
        )
        if request.prompt_logprobs:
            row.prompt_logprobs = [None] * len(request.input_ids)
        with self._cond:
            self._admit_check()
            self.rate_limit(len(request.input_ids) + request.max_new_tokens)
            if not self.siblings.attach(row):
                self._waiting.append(row)
            self.metrics.queue_depth.set(len(self._waiting) + len(self._classify))
            self.metrics.observe_request(request.adapter)
            self._cond.notify_all()
        return handle

    # -- the loop (engine thread) -----------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        if self.device.type == "cuda":  # kernels launch on the thread's current device (cuda:0 by default)
            torch.cuda.set_device(self.device)
        while True:
            with self._cond:
                if not self._has_work():
                    self._cond.notify_all()  # for wait_idle(): nothing is queued or running
                while not self._stopping and (self._holds or not self._has_work()):
                    self._cond.wait(IDLE_WAIT_S)
                if self._stopping:
                    return
                self._step_lock.acquire()  # taken under the condition: hold() cannot slip in between
            try:
                self.step()
            except Exception as exc:  # a bug or device error: fail what is running, keep serving others
                log.exception("engine step failed")
                self._fail(self._running_rows(), exc)
                if self._batch is not None:
                    self._batch.clear()
            finally:
                self._step_lock.release()

    def queued(self) -> int:
        """Requests waiting: generations (sibling rows waiting for their leader's prompt included) and jobs."""
        return len(self._waiting) + len(self.siblings.followers()) + len(self._classify)

    def _has_work(self) -> bool:
        return bool(self._waiting or self._classify or self._running_rows())

    def step(self) -> None:
        """One iteration: schedule -> classify -> forward -> sample -> emit."""
        with self.model_lock:
            if self._batch is not None:
                self._paged_step(self._batch)
            else:  # a classifier base: no rows generate, only jobs run
                with self._cond:
                    jobs = self._take_classify_jobs()
                self._run_jobs(jobs)

    def _note_cancel(self) -> None:
        """A handle was cancelled (on the event loop, or on this thread when its loop closed)."""
        self._cancels += 1

    def _enqueue(self, rows: Iterable[Row]) -> None:
        """Queue rows that waited elsewhere (siblings for their leader): one cancelled meanwhile may have been
        counted before it was here to be seen, so it is counted again (called under the condition)."""
        for row in rows:
            self._waiting.append(row)
            if row.handle.cancelled:
                self._cancels += 1

    def _drop_cancelled(self) -> None:
        """Waiting rows whose client went away leave the queue (called under the condition). The queue is read
        only if a handle was cancelled since the last look: its flag is set before `_cancels` moves."""
        cancels = self._cancels
        if cancels == self._cancels_seen:
            return
        self._cancels_seen = cancels
        cancelled = [row for row in self._waiting if row.handle.cancelled]
        for row in cancelled:
            self._leave(row)
        if cancelled:
            self._waiting = TenantQueue(row for row in self._waiting if not row.handle.cancelled)

    def _emit(self, rows: list[Row], picks: list[Pick | Exception]) -> None:
        now = time.perf_counter()
        for row, pick in zip(rows, picks):
            if row.handle.cancelled:
                continue
            if isinstance(pick, Exception):
                self._fail_alone(row, pick)
                continue
            try:
                self._emit_row(row, pick, now)
            except Exception as exc:
                self._fail_alone(row, exc)
        self.metrics.observe_tokens([row.request.adapter for row in rows])

    def _fail_alone(self, row: Row, exc: Exception) -> None:
        """Fail one row of the step (its sampling or emitting went wrong); the others go on."""
        status, _ = status_of(exc)
        log.log(
            logging.ERROR if status >= 500 else logging.INFO,
            "request %d failed alone: %s",
            row.handle.id,
            exc,
            exc_info=exc if status >= 500 else None,
        )
        self._fail([row], exc)

    def _emit_row(self, row: Row, pick: Pick, now: float) -> None:
        """Record the row's token (detokenize, check stops), send its events."""
        event = row.accept(pick.token_id, pick.logprob, self.tok)
        if row.handle.first_token_at is None:
            row.handle.first_token_at = now
            self.metrics.time_to_first_token.observe(now - row.handle.submitted_at)
        row.handle.push(event)
        if row.finish_reason is not None:
            row.handle.push(row.finish_event())
            # Done: it leaves at the next schedule, before any forward, so its adapter may go now.
            release_lease(row.request.lease)

    @staticmethod
    def _fail(rows: list[Row], exc: BaseException) -> None:
        for row in rows:
            row.failed = True  # leaves at the next schedule
            row.handle.push(ErrorEvent(exc))
            release_lease(row.request.lease)  # failed rows never run again

    @staticmethod
    def _leave(row: Row) -> None:
        """A row leaves the engine: a cancelled one still gets a last event, so that nobody awaits it forever."""
        if not row.ended:
            row.failed = True
            row.handle.push(ErrorEvent(RequestCancelledError()))
        release_lease(row.request.lease)


class EngineHold:
    """What `Engine.hold()` yields: waits for the queue to reach a size (the thread is paused meanwhile)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def wait_queued(self, count: int, timeout: float = 60.0) -> None:
        """Block until `count` requests are queued (generations and classifications); TimeoutError after
        `timeout` seconds — a safety net against a hang, not a timing assumption."""
        engine = self.engine
        with engine._cond:
            queued = lambda: engine.queued() >= count  # noqa: E731
            if not engine._cond.wait_for(queued, timeout):
                raise TimeoutError(f"{count} request(s) were never queued")
