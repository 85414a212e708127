"""The padded path of the engine (a mixin of `Engine`): for the bases `model.paged_support()` names a reason
for (encoder-decoders; MPT's ALiBi). The running rows decode one token in a (B, 1) step over the model's
`DecodeState`; admitted rows are prefilled whole, together, and concatenated into it. This file goes when the
paged core covers those bases (issue 16: one engine core).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..sampling import choose_tokens
from .batch import Row, RunningBatch
from .types import ClassifyJob

if TYPE_CHECKING:
    from .engine import Engine


class PaddedPath:
    """The padded step: schedule (row slots) -> classify -> forward (decode + prefill) -> sample -> emit.

    Its methods run on the Engine (`self: Engine`; mypy's misc note on that self type is silenced: the mixin
    is only ever a base of Engine)."""

    def _padded_step(self: Engine, batch: RunningBatch) -> None:  # type: ignore[misc]
        admitted, jobs = self._schedule(batch)
        self._run_jobs(jobs)
        try:
            logits = self._forward(batch, admitted)
        except Exception as exc:
            # Rows admitted this step but not yet in the batch would otherwise be lost: fail them
            # too (the caller fails the batch's rows).
            in_batch = {id(row) for row in batch.rows}
            self._fail([row for row in admitted if id(row) not in in_batch], exc)
            raise
        if logits is None:
            return
        self._emit(batch.rows, choose_tokens([row.sampler for row in batch.rows], logits))

    def _schedule(self: Engine, batch: RunningBatch) -> tuple[list[Row], list[ClassifyJob]]:  # type: ignore[misc]
        for row in batch.rows:
            if row.done:  # it leaves the batch now: its adapter may be unloaded from here on
                self._leave(row)
        batch.keep([i for i, row in enumerate(batch.rows) if not row.done])
        self.metrics.running_rows.set(len(batch))
        admitted: list[Row] = []
        with self._cond:
            self._drop_cancelled()
            self.fairness.notice(self._waiting, (row.tenant for row in batch.rows))
            while self._waiting and len(batch) + len(admitted) < self.max_batch_size:
                row = self.fairness.pop_next(self._waiting)
                self.fairness.charge(row.tenant, prompt_tokens=len(row.request.input_ids))
                admitted.append(row)
            jobs = self._take_classify_jobs()
        return admitted, jobs

    def _forward(self: Engine, batch: RunningBatch, admitted: list[Row]) -> torch.Tensor | None:  # type: ignore[misc]
        """Logits (B, V) for the running rows (decode) followed by the admitted ones (prefill)."""
        parts: list[torch.Tensor] = []
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

    def _prefill(self: Engine, rows: list[Row]) -> list[tuple[list[Row], torch.Tensor, Any]]:  # type: ignore[misc]
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
