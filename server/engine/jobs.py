"""The engine's classify and embed jobs (a mixin of `Engine`): texts (or images) that take one forward each,
no decoding. Handlers queue them (`submit_classify`, `submit_embed`); each step takes up to
`max_batch_size` inputs of them (`_take_classify_jobs`, under the engine's condition) and runs one dynamic
batch per kind of job, (task, pooling) (`_run_jobs`). A failed batch runs again job by job, so that only the
job at fault fails.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import torch

from ..store import Lease
from .limits import prompt_positions
from .types import ClassifyJob, release_lease

if TYPE_CHECKING:
    from .engine import Engine


class JobQueue:
    """Classify and embed jobs, from the queue to their futures. Its methods run on the Engine (`self: Engine`;
    mypy's misc note on that self type is silenced: the mixin is only ever a base of Engine)."""

    # -- submitting (event loop side) --------------------------------------------------------------------
    def submit_classify(  # type: ignore[misc]
        self: Engine,
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
        return self._submit_job(
            ClassifyJob(
                input_ids, adapter, loop.create_future(), loop, lease=lease, pixel_values=pixel_values
            )
        )

    def submit_embed(  # type: ignore[misc]
        self: Engine,
        input_ids: list[list[int]],
        adapter: str | None,
        loop: asyncio.AbstractEventLoop,
        lease: Lease | None = None,
        pooling: str | None = None,
    ) -> asyncio.Future[list[torch.Tensor]]:
        """As `submit_classify`, for embeddings: the future resolves to one pooled hidden state (d,) per text
        (`pooling` None: the base kind's default). Batched with the other jobs of its pooling in one forward."""
        job = ClassifyJob(
            input_ids, adapter, loop.create_future(), loop, lease=lease, task="embed", pooling=pooling
        )
        return self._submit_job(job)

    def _submit_job(self: Engine, job: ClassifyJob) -> asyncio.Future[list[torch.Tensor]]:  # type: ignore[misc]
        if job.pixel_values is None:  # images (`pixel_values`, image bases) have no token limits
            self.limits.check_inputs(
                [len(ids) for ids in job.input_ids], prompt_positions(self.model, job.model_name)
            )
        with self._cond:
            self._admit_check()
            self.rate_limit(sum(len(ids) for ids in job.input_ids))
            self._classify.append(job)
            self.metrics.queue_depth.set(len(self._waiting) + len(self._classify))
            self.metrics.observe_request(job.adapter)
            self._cond.notify_all()
        return job.future

    # -- running (engine thread) -------------------------------------------------------------------------
    def _take_classify_jobs(self: Engine) -> list[ClassifyJob]:  # type: ignore[misc]
        """This step's classify and embed jobs, up to max_batch_size inputs (called under the condition)."""
        jobs: list[ClassifyJob] = []
        texts = 0
        while self._classify and (not jobs or texts + self._classify[0].rows <= self.max_batch_size):
            job = self._classify.popleft()
            if not job.cancelled:
                jobs.append(job)
                texts += job.rows
            else:
                release_lease(job.lease)
        self.metrics.queue_depth.set(len(self._waiting) + len(self._classify))
        return jobs

    def _run_jobs(self: Engine, jobs: list[ClassifyJob]) -> None:  # type: ignore[misc]
        """This step's classify and embed jobs: one forward per kind of job, (task, pooling)."""
        for kind in {(job.task, job.pooling): None for job in jobs}:
            self._run_classify([job for job in jobs if (job.task, job.pooling) == kind])

    def _run_classify(self: Engine, jobs: list[ClassifyJob]) -> None:  # type: ignore[misc]
        adapters = [job.adapter for job in jobs for _ in range(job.rows)]
        names = [job.model_name for job in jobs for _ in range(job.rows)]
        try:
            if jobs[0].pixel_values is not None:  # an image base: every job carries images
                pixels = torch.cat([job.pixel_values for job in jobs if job.pixel_values is not None])
                logits = self.model.classify_images(pixels, names)
            elif jobs[0].task == "embed":  # _run_jobs groups jobs by (task, pooling)
                ids = [seq for job in jobs for seq in job.input_ids]
                logits = self.model.embed(ids, names, jobs[0].pooling)
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
