"""`n` > 1 rows of one prompt (OpenAI `n` / `best_of`, TGI `best_of`) compute that prompt once.

The first row of a group (`GenerationRequest.group`) queued is its *leader*; the rows queued after it, while it
has not sampled yet, are its *followers*: they wait beside it, outside the queue. The step that completes the
leader's prompt forks its KV blocks to each follower (`KVBlocks.fork`: the full blocks shared by refcount, the
partial last block copied, `model.copy_kv_block`) and samples every follower from the leader's logits of the
last prompt position, each with its own sampler (its own seed): from there they are independent rows. A
follower that cannot be forked then (no free block, no row slot, cancelled) or whose leader left before
sampling joins the queue as an ordinary row and computes its prompt itself (the prefix cache still helps).

Attaching and forking happen under the engine's condition: a row is never attached to a leader that forked.
"""

from __future__ import annotations

from typing import Any

import torch

from .batch import Row
from .paged import PagedBatch


class SiblingGroups:
    """The leaders that have not sampled yet, by group."""

    def __init__(self) -> None:
        self._leaders: dict[int, Row] = {}

    def attach(self, row: Row) -> bool:
        """True: `row` follows its group's waiting leader (it is not queued); False: queue it (it may lead).
        Called under the engine's condition."""
        group = row.request.group
        if group is None:
            return False
        leader = self._leaders.get(group)
        if leader is None or leader.done or leader.request.model_name != row.request.model_name:
            self._leaders[group] = row
            return False
        leader.followers.append(row)
        return True

    def followers(self) -> list[Row]:
        return [row for leader in self._leaders.values() for row in leader.followers]

    def orphans(self) -> list[Row]:
        """Followers whose leader left before sampling: they are queued (called under the condition)."""
        out: list[Row] = []
        for group, leader in list(self._leaders.items()):
            if leader.done:
                out += leader.followers
                leader.followers = []
                del self._leaders[group]
        return out

    def take(self, leader: Row) -> list[Row]:
        """The leader samples now: its followers, and the group closes (called under the condition)."""
        if self._leaders.get(leader.request.group or -1) is leader:
            del self._leaders[leader.request.group or -1]
        followers, leader.followers = leader.followers, []
        return followers


def fork(
    batch: PagedBatch, model: Any, leader: Row, followers: list[Row], max_rows: int
) -> tuple[list[Row], list[Row]]:
    """Fork the leader's computed prompt to each follower it can: (forked rows, now running; rows to queue)."""
    forked: list[Row] = []
    queue: list[Row] = []
    computed = leader.seq.computed
    for row in followers:
        if row.handle.cancelled or len(batch.rows) >= max_rows:
            queue.append(row)
            continue
        copy = batch.blocks.fork(leader.seq.seq_id, row.seq.seq_id, computed, extra=row.seq.reserved_blocks)
        if copy is False:
            queue.append(row)
            continue
        if isinstance(copy, tuple):
            model.copy_kv_block(*copy)
        row.seq.computed = row.seq.charged = computed
        row.prompt_logprobs = list(leader.prompt_logprobs)
        row.seq.prompt_logits = False  # it has them: a recompute after preemption may reuse cached blocks
        batch.rows.append(row)
        forked.append(row)
    return forked, queue


def with_followers(
    groups: SiblingGroups, cond: Any, batch: PagedBatch, model: Any, rows: list[Row], logits: torch.Tensor
) -> tuple[list[Row], torch.Tensor, list[Row]]:
    """The step's sampling rows and logits (n, V), with every forked follower and its leader's logits row
    appended; and the followers to queue."""
    extra: list[Row] = []
    index: list[int] = []
    queue: list[Row] = []
    for i, row in enumerate(rows):
        if row.request.group is None or row.generated:
            continue
        with cond:
            followers = groups.take(row)
        if not followers:
            continue
        forked, rest = fork(batch, model, row, followers, batch.scheduler.max_rows)
        extra += forked
        index += [i] * len(forked)
        queue += rest
    if not extra:
        return rows, logits, queue
    return rows + extra, torch.cat([logits, logits[index]]), queue
