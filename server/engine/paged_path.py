"""The engine's step (a mixin of `Engine`), over every generating base (`model.paged_support()` is None):

schedule  rows that finished leave (their blocks go back), the scheduler picks this step's chunks under the
          token budget (decodes first, then prefill chunks; admission by free blocks, VTC order,
          preemption when blocks run out: engine/scheduler.py, engine/paged.py)
forward   one `model.paged_step` over the packed chunks (adapters_core/paged); if it fails, each chunk runs
          alone so that only the rows at fault fail. A decode-only step whose rows all run on static buffers
          replays a CUDA graph instead (`--cuda-graphs`, on a GPU: adapters_core/paged/graphs.py)
sample    the rows whose stream the step completed (n > 1 siblings fork the first row's blocks here:
          engine/siblings.py), with their own samplers; prompt logprobs are recorded on the way
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from adapters_core.multi import MultiAdapterModel
from adapters_core.paged.graphs import DecodeGraphRunner
from adapters_core.paged.plan import StepPlan

from ..errors import InvalidInputError
from ..sampling import choose_tokens
from .batch import Row
from .paged import PagedBatch
from .scheduler import StepSchedule
from .siblings import with_followers
from .types import ClassifyJob

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("swapyard.engine")


class PagedPath:
    """The paged step. Its methods run on the Engine (`self: Engine`; mypy's misc note on that self type is
    silenced: the mixin is only ever a base of Engine)."""

    # The CUDA-graph decode runner (`_graph_runner`): None until start-up decides, False when off.
    decode_graphs: DecodeGraphRunner | bool | None = None
    # A test's stand-in for CUDA-graph capture (`DecodeGraphRunner(capture_with=)`): with it the engine makes
    # and warms its runner on the CPU too, as it does on a GPU.
    graph_capture: Callable[[Callable[[], torch.Tensor]], Callable[[], torch.Tensor]] | None = None

    def _paged_step(self: Engine, batch: PagedBatch) -> None:  # type: ignore[misc]
        schedule, jobs = self._schedule_paged(batch)
        self._run_jobs(jobs)
        rows, logits = self._forward_paged(batch, schedule)
        if rows and logits is not None:
            rows, logits, queue = with_followers(self.siblings, self._cond, batch, self.model, rows, logits)
            if queue:
                with self._cond:
                    self._enqueue(queue)
            self._emit(rows, choose_tokens([row.sampler for row in rows], logits))

    def _schedule_paged(  # type: ignore[misc]
        self: Engine, batch: PagedBatch
    ) -> tuple[StepSchedule[Row], list[ClassifyJob]]:
        for row in batch.keep_running():  # they leave now: their adapter may be unloaded from here on
            self._leave(row)
        hits = batch.blocks.hit_positions, batch.blocks.queried_positions
        with self._cond:
            self._enqueue(self.siblings.orphans())
            self._drop_cancelled()
            schedule = batch.schedule(self._waiting)
            jobs = self._take_classify_jobs()
        for row in schedule.unfit:  # check_fits refuses these at submit: a bug if it happens
            self._fail_alone(row, InvalidInputError("the request does not fit in the KV cache"))
        self.metrics.preemptions.inc(len(schedule.preempted))
        self.metrics.prefix_cache_hits.inc(batch.blocks.hit_positions - hits[0])
        self.metrics.prefix_cache_queries.inc(batch.blocks.queried_positions - hits[1])
        self.metrics.running_rows.set(len(batch))
        self._observe_blocks()
        return schedule, jobs

    def _forward_paged(  # type: ignore[misc]
        self: Engine, batch: PagedBatch, schedule: StepSchedule[Row]
    ) -> tuple[list[Row], torch.Tensor | None]:
        """Run the schedule's chunks; return the rows whose stream they completed and those rows' logits
        (n, V). If the step fails, each chunk runs alone so that only the rows at fault fail."""
        chunks = schedule.chunks
        if not chunks:
            return [], None
        try:
            plan = batch.plan(chunks)
            logits: torch.Tensor | None = self._sampling_logits(plan, chunks, self._model_step(plan))
            done = chunks
        except Exception as exc:
            if len(chunks) == 1:
                self._fail_alone(chunks[0].row, exc)
                return [], None
            done, parts = [], []
            for chunk in chunks:
                try:
                    plan = batch.plan([chunk])
                    part = self._sampling_logits(plan, [chunk], self.model.paged_step(plan))
                except Exception as solo_exc:
                    self._fail_alone(chunk.row, solo_exc)
                    continue
                done.append(chunk)
                if chunk.last:
                    parts.append(part)
            logits = torch.cat(parts) if parts else None
        rows = [chunk.row for chunk in done if chunk.last]
        if logits is not None and logits.shape[0] != len(rows):
            raise RuntimeError(
                f"paged_step returned {logits.shape[0]} logits rows for {len(rows)} chunks wanting them"
            )
        for chunk in done:
            batch.commit(chunk)
        self.metrics.prompt_tokens.inc(
            sum(max(0, min(c.start + c.count, c.row.seq.prompt_len) - c.start) for c in done)
        )
        self.metrics.observe_step([chunk.row.request.adapter for chunk in done])
        return rows, logits

    def _model_step(self: Engine, plan: StepPlan) -> torch.Tensor:  # type: ignore[misc]
        """`model.paged_step(plan)`, or the same logits from a replayed CUDA graph when the step is decode-only
        and every row can run on the static buffers (`DecodeGraphRunner.why_not`)."""
        runner = self._graph_runner()
        if runner is None or runner.why_not(plan) is not None:
            return self.model.paged_step(plan)
        try:
            return runner.step(plan)
        except Exception:  # the graphs' machinery, not a row, failed: serve eagerly from now on
            log.exception("CUDA-graph decode step failed; decode steps run eagerly from now on")
            self.decode_graphs = False
            return self.model.paged_step(plan)

    def _graph_runner(self: Engine) -> DecodeGraphRunner | None:  # type: ignore[misc]
        """The engine's DecodeGraphRunner: made at start-up (or the first step) when `--cuda-graphs` is on and the
        model is on a GPU (`decode_graphs` None: not decided yet; False: off; a test may set a runner, or
        `graph_capture`, on the CPU). Its largest shape: `max_batch_size` rows, and the blocks of a row of
        `--max-total-tokens` positions (plus one for virtual positions), at most the pool's."""
        runner = self.decode_graphs
        if runner is None:
            runner = False
            # a stand-in model (tests' paged double) has no static step
            if (
                self.paging.cuda_graphs
                and (self.device.type == "cuda" or self.graph_capture is not None)
                and isinstance(self.model, MultiAdapterModel)
            ):
                block = self.paging.block_size
                runner = DecodeGraphRunner(
                    self.model,
                    max_batch=self.max_batch_size,
                    max_blocks=-(-self.limits.max_total_tokens // block) + 1,  # + virtual positions' block
                    capture_with=self.graph_capture,
                )
            self.decode_graphs = runner
        return runner if isinstance(runner, DecodeGraphRunner) else None

    def _start_decode_graphs(self: Engine) -> None:  # type: ignore[misc]
        """At start-up (after the KV pool exists): capture every (batch, width) shape a decode step can meet, so
        that no step captures while serving. A base the static step cannot run turns graphs off; a capture that
        fails logs and turns them off (decode steps then run eagerly, as after a failure mid-serving)."""
        runner = self._graph_runner()
        if runner is None:
            return
        reason = runner.base_reason()
        if reason is not None:
            log.info("decode steps run eagerly: %s", reason)
            self.decode_graphs = False
            return
        try:
            with self.model_lock:  # as a step: the adapter store changes the model's pools only between
                captured = runner.capture()
        except Exception:
            log.exception("capturing CUDA-graph decode steps at start-up failed; decode steps run eagerly")
            self.decode_graphs = False
            return
        log.info(
            "captured %d CUDA-graph decode steps: batch buckets %s x width buckets (blocks) %s",
            captured,
            runner.batch_sizes,
            runner.widths,
        )

    def _sampling_logits(  # type: ignore[misc]
        self: Engine, plan: Any, chunks: list[Any], logits: torch.Tensor
    ) -> torch.Tensor:
        """The rows of `logits` (paged_step's layout, adapters_core/paged/plan.py) that sample, one per chunk
        ending its row's stream; the prompt logprobs of the chunks with `all_logits` are recorded on the way."""
        keep: list[int] = []
        at = 0
        for seq_chunk, chunk in zip(plan.chunks, chunks):
            if seq_chunk.all_logits:
                self._record_prompt_logprobs(chunk, logits[at : at + chunk.count])
                at += chunk.count
            elif seq_chunk.want_logits:
                at += 1
            if seq_chunk.want_logits:
                keep.append(at - 1)
        if at != logits.shape[0]:
            raise RuntimeError(f"paged_step returned {logits.shape[0]} logits rows, the plan wants {at}")
        return logits[keep]

    @staticmethod
    def _record_prompt_logprobs(chunk: Any, logits: torch.Tensor) -> None:
        """Row j of `logits` (count, V) follows stream position start + j: it scores the prompt token at the next
        position, if that is a prompt token after the first (the row's `prompt_logprobs` index = position - v)."""
        row, seq = chunk.row, chunk.row.seq
        virtual = seq.prompt_len - len(row.request.input_ids)
        k = row.sampler.params.top_logprobs
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for j in range(chunk.count):
            nxt = chunk.start + j + 1
            if not virtual < nxt < seq.prompt_len:
                continue
            token = seq.stream[nxt]
            top: tuple[tuple[int, float], ...] = ()
            if k:
                values, ids = logprobs[j].topk(k)
                top = tuple(zip(ids.tolist(), values.tolist()))
            row.prompt_logprobs[nxt - virtual] = (float(logprobs[j, token]), top)
        if chunk.start + chunk.count >= seq.prompt_len:
            seq.prompt_logits = False  # all collected: a recompute after preemption may reuse cached blocks

    def _observe_blocks(self: Engine) -> None:  # type: ignore[misc]
        if self._batch is not None:
            pool = self._batch.blocks.pool
            self.metrics.kv_blocks_used.set(pool.num_used)
            self.metrics.kv_blocks_free.set(pool.num_free)
