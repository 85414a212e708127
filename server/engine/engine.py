"""The engine: an actor thread that owns the queue, the running batch and the model state.

Handlers call `submit_generate` / `submit_classify` from the event loop and await events; they never touch
the model. The thread repeats one step, a short named pipeline:

    schedule  drop finished and cancelled rows (DecodeState.select), admit waiting requests
    classify  run waiting classification jobs as one dynamic batch
    forward   decode the running rows one token, prefill the admitted ones, concat their states
    sample    pick each row's next token with its own sampler
    emit      send tokens, detect EOS / stop sequences / length, send finish events

So a new request joins between two decode steps and a finished row leaves before the next one: nobody waits
for anybody else to finish. A client that disconnects sets `cancelled`; its row leaves at the next schedule
with a last `ErrorEvent(RequestCancelledError)`, so whoever still awaits its events stops waiting.

A per-row failure (sampling, stop handling, detokenization, pushing its event) fails that row alone: it gets
an `ErrorEvent`, releases its lease and leaves at the next schedule; the step goes on for the others. Only a
failure of the batched forward fails the rows it ran.

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
from collections.abc import Iterator
from typing import Any

import torch

from ..adapters import AdapterRegistry
from ..errors import NotReadyError, QueueFullError, status_of
from ..metrics import Metrics
from ..modeling import LoadedBase
from ..sampling import Pick, RowSampler, choose_tokens
from ..store import Lease
from ..tokenization import IncrementalDecoder, Tokenization
from .batch import Row, RunningBatch
from .limits import TokenLimits, prompt_positions
from .types import (
    ClassifyJob,
    ErrorEvent,
    GenerationRequest,
    RequestCancelledError,
    RequestHandle,
    release_lease,
)

log = logging.getLogger("swapyard.engine")
IDLE_WAIT_S = 0.5  # the thread sleeps on a condition; this only bounds how late it notices a stop


class Engine:
    """Continuous batching over a model with `prefill`, `decode` and `classify` (adapters_core.multi)."""

    def __init__(
        self,
        base: LoadedBase,
        registry: AdapterRegistry,
        *,
        max_batch_size: int,
        max_queued_requests: int,
        limits: TokenLimits,
        metrics: Metrics | None = None,
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
        self._waiting: collections.deque[Row] = collections.deque()
        self._classify: collections.deque[ClassifyJob] = collections.deque()
        self._batch = RunningBatch()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._holds = 0  # hold() depth: no step starts while > 0
        self._step_lock = threading.Lock()  # held by the thread for each step (hold() waits on it)
        self.draining = False
        # Held for each step: the adapter store changes the model's pools only between steps.
        self.model_lock = registry.model_lock
        self.started_at = int(time.time())

    # -- lifecycle ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="swapyard-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; every request still waiting or running gets a 503 error event."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        gone = NotReadyError("the server is shutting down")
        for row in [*self._waiting, *self._batch.rows]:
            row.handle.push(ErrorEvent(gone))
            release_lease(row.request.lease)
        for job in self._classify:
            job.resolve(gone)
            release_lease(job.lease)
        self._waiting.clear()
        self._classify.clear()
        self._batch = RunningBatch()

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
        handle = RequestHandle(loop)
        row = Row(
            request, handle, RowSampler(request.sampling, request.input_ids), IncrementalDecoder(self.tok)
        )
        with self._cond:
            self._admit_check()
            self._waiting.append(row)
            self.metrics.queue_depth.set(len(self._waiting) + len(self._classify))
            self.metrics.observe_request(request.adapter)
            self._cond.notify_all()
        return handle

    def submit_classify(
        self,
        input_ids: list[list[int]],
        adapter: str | None,
        loop: asyncio.AbstractEventLoop,
        lease: Lease | None = None,
        pixel_values: torch.Tensor | None = None,
    ) -> asyncio.Future[list[torch.Tensor]]:
        """Queue texts for classification with `adapter` (a public name) under its `lease`; the future resolves
        to one logits vector (C,) per text. 422 if a text crosses the input limit counting the positions its
        adapter adds. On an image base `pixel_values` (N, C, H, W) replaces the texts (`input_ids` is empty)
        and each result is (C,) or, for segmentation, (C, h, w)."""
        job = ClassifyJob(
            input_ids, adapter, loop.create_future(), loop, lease=lease, pixel_values=pixel_values
        )
        if pixel_values is None:  # images (`pixel_values`, image bases) have no token limits
            self.limits.check_inputs(
                [len(ids) for ids in input_ids], prompt_positions(self.model, job.model_name)
            )
        with self._cond:
            self._admit_check()
            self._classify.append(job)
            self.metrics.queue_depth.set(len(self._waiting) + len(self._classify))
            self.metrics.observe_request(adapter)
            self._cond.notify_all()
        return job.future

    # -- the loop (engine thread) -----------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                while not self._stopping and (self._holds or not self._has_work()):
                    self._cond.wait(IDLE_WAIT_S)
                if self._stopping:
                    return
                self._step_lock.acquire()  # taken under the condition: hold() cannot slip in between
            try:
                self.step()
            except Exception as exc:  # a bug or device error: fail what is running, keep serving others
                log.exception("engine step failed")
                self._fail(self._batch.rows, exc)
                self._batch = RunningBatch()
            finally:
                self._step_lock.release()

    def _has_work(self) -> bool:
        return bool(self._waiting or self._classify or self._batch.rows)

    def step(self) -> None:
        """One iteration: schedule -> classify -> forward -> sample -> emit."""
        with self.model_lock:
            admitted, jobs = self._schedule()
            if jobs:
                self._run_classify(jobs)
            try:
                logits = self._forward(admitted)
            except Exception as exc:
                # Rows admitted this step but not yet in the batch would otherwise be lost: fail them
                # too (the caller fails the batch's rows).
                in_batch = {id(row) for row in self._batch.rows}
                self._fail([row for row in admitted if id(row) not in in_batch], exc)
                raise
            if logits is None:
                return
            picks = self._sample(logits)
            self._emit(picks)

    def _schedule(self) -> tuple[list[Row], list[ClassifyJob]]:
        batch = self._batch
        for row in batch.rows:
            if row.done:  # it leaves the batch now: its adapter may be unloaded from here on
                self._leave(row)
        batch.keep([i for i, row in enumerate(batch.rows) if not row.done])
        self.metrics.running_rows.set(len(batch))
        admitted: list[Row] = []
        jobs: list[ClassifyJob] = []
        with self._cond:
            while self._waiting and len(batch) + len(admitted) < self.max_batch_size:
                row = self._waiting.popleft()
                if not row.handle.cancelled:
                    admitted.append(row)
                else:
                    self._leave(row)
            texts = 0
            while self._classify and (not jobs or texts + self._classify[0].rows <= self.max_batch_size):
                job = self._classify.popleft()
                if not job.cancelled:
                    jobs.append(job)
                    texts += job.rows
                else:
                    release_lease(job.lease)
            self.metrics.queue_depth.set(len(self._waiting) + len(self._classify))
        return admitted, jobs

    def _forward(self, admitted: list[Row]) -> torch.Tensor | None:
        """Logits (B, V) for the running rows (decode) followed by the admitted ones (prefill)."""
        parts: list[torch.Tensor] = []
        batch = self._batch
        if batch.rows:
            next_tokens = torch.tensor([row.last_token for row in batch.rows], device=self.device)
            logits, batch.state = self.model.decode(batch.state, next_tokens)
            parts.append(logits)
        for rows, logits, state in self._prefill(admitted):
            batch.extend(rows, state)
            parts.append(logits)
            self.metrics.prompt_tokens.inc(sum(len(row.request.input_ids) for row in rows))
        if not parts:
            return None
        self.metrics.observe_step([row.request.adapter for row in batch.rows])
        self.metrics.running_rows.set(len(batch.rows))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _prefill(self, rows: list[Row]) -> list[tuple[list[Row], torch.Tensor, Any]]:
        """Prefill `rows` together; if that fails (e.g. an adapter removed while they waited), retry them one
        by one so that only the row at fault gets the error."""
        if not rows:
            return []
        try:
            logits, state = self.model.prefill(
                [row.request.input_ids for row in rows], [row.request.model_name for row in rows]
            )
        except Exception as exc:
            if len(rows) == 1:
                self._fail(rows, exc)
                return []
            return [part for row in rows for part in self._prefill([row])]
        return [(rows, logits, state)]

    def _sample(self, logits: torch.Tensor) -> list[Pick | Exception]:
        """Each row's next token, or the exception that failed that row alone."""
        return choose_tokens([row.sampler for row in self._batch.rows], logits)

    def _emit(self, picks: list[Pick | Exception]) -> None:
        now = time.perf_counter()
        for row, pick in zip(self._batch.rows, picks):
            if row.handle.cancelled:
                continue
            if isinstance(pick, Exception):
                self._fail_alone(row, pick)
                continue
            try:
                self._emit_row(row, pick, now)
            except Exception as exc:
                self._fail_alone(row, exc)
        self.metrics.observe_tokens([row.request.adapter for row in self._batch.rows])

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

    def _run_classify(self, jobs: list[ClassifyJob]) -> None:
        adapters = [job.adapter for job in jobs for _ in range(job.rows)]
        names = [job.model_name for job in jobs for _ in range(job.rows)]
        try:
            if jobs[0].pixel_values is not None:  # an image base: every job carries images
                pixels = torch.cat([job.pixel_values for job in jobs if job.pixel_values is not None])
                logits = self.model.classify_images(pixels, names)
            else:
                logits = self.model.classify([seq for job in jobs for seq in job.input_ids], names)
        except Exception as exc:
            if len(jobs) == 1:
                jobs[0].resolve(exc)
                release_lease(jobs[0].lease)
                return
            for job in jobs:  # isolate the job at fault: the others must not fail with it
                self._run_classify([job])
            return
        self.metrics.observe_step(adapters)
        start = 0
        for job in jobs:
            n = job.rows
            job.resolve([t.detach().float().cpu() for t in logits[start : start + n]])
            release_lease(job.lease)
            start += n

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
            queued = lambda: len(engine._waiting) + len(engine._classify) >= count  # noqa: E731
            if not engine._cond.wait_for(queued, timeout):
                raise TimeoutError(f"{count} request(s) were never queued")
