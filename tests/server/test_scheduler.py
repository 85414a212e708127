"""The paged scheduler (server/engine/scheduler.py) driven against a token-level fake of the model.

`TokenCache` is what a paged KV cache holds, reduced to token ids: a step writes each chunk's tokens into its
rows' block slots and, for a chunk that ends its stream, reads the whole stream back through the block table
and derives the next token from all of it. So any bookkeeping bug — a wrong block, a shared block overwritten,
a position never computed, a preempted row resumed from a stale state — changes the tokens or trips an assert.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import pytest

from adapters_core.paged.blocks import BlockPool, KVBlocks
from server.engine.fairness import TenantQueue, VirtualTokenCounter
from server.engine.scheduler import Scheduler, SeqState, StepSchedule

UNWRITTEN = -2
QUEUES: list[type[collections.deque[Item]]] = [TenantQueue]  # the queue type a Run waits in (see the fixture)


@pytest.fixture(autouse=True, params=["TenantQueue", "deque"])
def queue_kind(request: pytest.FixtureRequest) -> None:
    """Every test runs over the engine's TenantQueue (counts kept per tenant) and a plain deque (the fair
    queue reads it whole): both must schedule alike."""
    QUEUES[0] = TenantQueue if request.param == "TenantQueue" else collections.deque


@dataclass(eq=False)
class Item:
    seq: SeqState
    tenant: str | None
    max_new: int
    generated: list[int] = field(default_factory=list)
    fair_seen: bool = False
    preempted: bool = False


def item(seq_id: int, prompt: list[int], max_new: int, tenant: str | None = None, key: str = "") -> Item:
    seq = SeqState(seq_id, tenant, key, list(prompt), prompt_len=len(prompt))
    return Item(seq, tenant, max_new)


class TokenCache:
    def __init__(self, pool: BlockPool) -> None:
        self.bs = pool.block_size
        self.slots = [[UNWRITTEN] * self.bs for _ in range(pool.num_blocks)]
        self.reserved = pool.reserved

    def step(self, blocks: KVBlocks, schedule: StepSchedule[Item]) -> dict[int, int]:
        """Write every chunk, then the next token of each chunk that ends its stream."""
        out = {}
        for chunk in schedule.chunks:
            seq = chunk.row.seq
            table = blocks.table(seq.seq_id)
            assert len(table) * self.bs >= chunk.start + chunk.count and min(table) >= self.reserved
            for p in range(chunk.start, chunk.start + chunk.count):
                self.slots[table[p // self.bs]][p % self.bs] = seq.stream[p]
        for chunk in schedule.chunks:
            if chunk.last:
                seq = chunk.row.seq
                table = blocks.table(seq.seq_id)
                seen = [self.slots[table[p // self.bs]][p % self.bs] for p in range(len(seq.stream))]
                assert seen == seq.stream, f"row {seq.seq_id} reads back another stream"
                out[seq.seq_id] = next_token(seen)
        return out


def next_token(stream: list[int]) -> int:
    return (sum((i + 1) * t for i, t in enumerate(stream)) * 31 + len(stream)) % 97 + 3


@dataclass
class Run:
    scheduler: Scheduler[Item]
    cache: TokenCache
    running: list[Item] = field(default_factory=list)
    waiting: collections.deque[Item] = field(default_factory=lambda: QUEUES[0]())
    schedules: list[StepSchedule[Item]] = field(default_factory=list)
    finished: list[Item] = field(default_factory=list)
    # after each schedule: the running rows per tenant and the tenants with a row waiting
    shares: list[tuple[collections.Counter[str | None], set[str | None]]] = field(default_factory=list)

    @classmethod
    def make(
        cls,
        num_blocks: int,
        block_size: int,
        budget: int,
        max_rows: int = 64,
        while_decoding: int | None = None,
    ) -> Run:
        pool = BlockPool(num_blocks, block_size, reserved=1)
        scheduler = Scheduler(
            KVBlocks(pool),
            VirtualTokenCounter(),
            max_batch_tokens=budget,
            max_rows=max_rows,
            prefill_while_decoding=while_decoding,
        )
        return cls(scheduler, TokenCache(pool))

    def step(self) -> StepSchedule[Item]:
        blocks = self.scheduler.blocks
        schedule = self.scheduler.schedule(self.running, self.waiting)
        assert not schedule.unfit
        self.shares.append((running_rows(self), {r.tenant for r in self.waiting}))
        if isinstance(self.waiting, TenantQueue):  # its counts agree with a recount after every step
            assert self.waiting.tenants == collections.Counter(r.tenant for r in self.waiting)
            assert self.waiting.preempted == sum(r.preempted for r in self.waiting)
        tokens = self.cache.step(blocks, schedule)
        for chunk in schedule.chunks:
            seq = chunk.row.seq
            seq.computed += chunk.count
            blocks.commit(seq.seq_id, seq.adapter_key, seq.stream, seq.computed)
        for chunk in schedule.chunks:
            row = chunk.row
            if chunk.last:
                row.seq.stream.append(tokens[row.seq.seq_id])
                row.generated.append(tokens[row.seq.seq_id])
                if len(row.generated) == row.max_new:
                    blocks.free(row.seq.seq_id)
                    self.running.remove(row)
                    self.finished.append(row)
        self.schedules.append(schedule)
        return schedule

    def until_done(self, limit: int = 2000) -> None:
        for _ in range(limit):
            if not self.running and not self.waiting:
                return
            self.step()
        raise AssertionError("the rows never finished")


def alone(prompt: list[int], max_new: int) -> list[int]:
    run = Run.make(num_blocks=64, block_size=4, budget=1000)
    run.waiting.append(item(0, prompt, max_new))
    run.until_done()
    return run.finished[0].generated


def prompts(n: int, lengths: list[int]) -> list[list[int]]:
    return [[(7 * i + 3 * j) % 90 + 5 for j in range(lengths[i % len(lengths)])] for i in range(n)]


def test_the_token_budget_is_never_exceeded_and_every_row_matches_its_run_alone() -> None:
    run = Run.make(num_blocks=200, block_size=4, budget=8, max_rows=6)
    ps = prompts(10, [3, 17, 40, 1, 9])
    for i, p in enumerate(ps):
        run.waiting.append(item(i, p, max_new=5))
    run.until_done()
    assert max(s.tokens for s in run.schedules) == 8  # the budget was reached, never passed
    assert all(len(s.chunks) <= 6 for s in run.schedules)
    for row in run.finished:
        assert row.generated == alone(ps[row.seq.seq_id], 5)
    assert run.scheduler.blocks.pool.num_used == 0


def test_chunked_prefill_interleaves_with_decodes() -> None:
    """Two running rows get a token every step while a 60-token prompt is prefilled in chunks beside them."""
    run = Run.make(num_blocks=200, block_size=4, budget=8)
    run.waiting.extend([item(0, [5, 6], max_new=40), item(1, [7, 8, 9], max_new=40)])
    run.step()
    run.step()
    assert [len(r.generated) for r in run.running] == [2, 2]
    long = item(2, prompts(1, [60])[0], max_new=3)
    run.waiting.append(long)
    steps_to_first_token = 0
    while not long.generated:
        schedule = run.step()
        steps_to_first_token += 1
        counts = {c.row.seq.seq_id: c.count for c in schedule.chunks}
        assert counts[0] == 1 and counts[1] == 1, counts  # the decoding rows keep their pace
        assert counts[2] <= 6 and schedule.tokens <= 8
    assert steps_to_first_token == 10  # 60 tokens in chunks of 6
    assert long.generated == alone(prompts(1, [60])[0], 1)


def test_prefill_beside_decoding_rows_is_capped_and_a_step_without_them_takes_the_whole_budget() -> None:
    """`prefill_while_decoding` 10 under a budget of 64: two decoding rows, a 60-token prompt arrives; each
    step runs both decodes and at most 10 prompt tokens (not 62), and the prompt's tokens are still exactly
    its own. With no row decoding, a prompt gets the whole budget."""
    run = Run.make(num_blocks=200, block_size=4, budget=64, while_decoding=10)
    first = item(0, prompts(1, [40])[0], max_new=30)
    run.waiting.append(first)
    assert run.step().tokens == 40  # nothing decodes yet: the whole prompt in one step
    run.waiting.append(item(1, [7, 8, 9], max_new=30))
    run.step()
    long = item(2, prompts(3, [60])[2], max_new=3)
    run.waiting.append(long)
    steps = 0
    while not long.generated:
        schedule = run.step()
        steps += 1
        counts = {c.row.seq.seq_id: c.count for c in schedule.chunks}
        assert counts[0] == 1 and counts[1] == 1 and counts[2] <= 10, counts
    assert steps == 6  # 60 prompt tokens, 10 a step
    run.until_done()
    assert long.generated == alone(prompts(3, [60])[2], 3)


def test_preemption_frees_blocks_and_the_row_resumes_with_exactly_its_own_tokens() -> None:
    ps = prompts(4, [6, 9, 5, 11])
    run = Run.make(num_blocks=9, block_size=4, budget=16)  # 8 usable blocks; 4 rows need 5-6 each at the end
    for i, p in enumerate(ps):
        run.waiting.append(item(i, p, max_new=14))
    run.until_done()
    preempted = [r for s in run.schedules for r in s.preempted]
    assert preempted, "the pool was meant to run out"
    assert all(s.tokens <= 16 for s in run.schedules)
    for row in run.finished:
        assert row.generated == alone(ps[row.seq.seq_id], 14), (
            f"row {row.seq.seq_id} changed after preemption"
        )
    assert run.scheduler.blocks.pool.num_used == 0


def test_reserved_blocks_decide_admission_and_leave_with_a_preempted_or_finished_row() -> None:
    """An encoder-decoder row's encoder keys/values are charged as `reserved_blocks` (engine/paged.py): held
    from admission until the row leaves, so they count against the free blocks and preemption frees them."""
    run = Run.make(num_blocks=9, block_size=4, budget=16)  # 8 usable blocks
    ps = prompts(2, [1])
    rows = [item(i, p, max_new=9) for i, p in enumerate(ps)]  # streams grow to 10 positions: 3 blocks
    for row in rows:
        row.seq.reserved_blocks = 3
    run.waiting.extend(rows)
    schedule = run.step()
    assert schedule.admitted == rows and run.scheduler.blocks.pool.num_used == 2 * (1 + 3)
    preempted: list[Item] = []
    while run.running or run.waiting:
        schedule = run.step()
        preempted += schedule.preempted
        held = sum(len(run.scheduler.blocks.table(r.seq.seq_id)) + 3 for r in run.running)
        assert run.scheduler.blocks.pool.num_used == held, "a row that left kept its reserved blocks"
    assert preempted, "the reservations were meant to force a preemption (2 x (3 + 3) > 8)"
    for row in run.finished:
        assert row.generated == alone(ps[row.seq.seq_id], 9)
    assert run.scheduler.blocks.pool.num_used == 0


def test_a_row_that_does_not_fit_blocks_admission_so_a_long_prompt_is_not_passed() -> None:
    run = Run.make(num_blocks=9, block_size=4, budget=64)  # 8 usable blocks
    run.waiting.append(item(0, prompts(1, [17])[0], max_new=10))  # holds 5 blocks, at most 7
    run.step()
    long = item(1, prompts(2, [16])[1], max_new=1)  # needs 4 blocks (no shared prefix): does not fit yet
    short = item(2, [5], max_new=1)  # would fit
    run.waiting.extend([long, short])
    schedule = run.step()
    assert not schedule.admitted, "a short row passed the long one that waits for blocks"
    run.until_done()
    order = [r.seq.seq_id for s in run.schedules for r in s.admitted]
    assert order.index(1) < order.index(2)


def test_vtc_admits_the_others_fairly_when_one_adapter_floods_the_queue() -> None:
    """20 requests of A, then 2 of B and 2 of C (10:1), one row at a time: A B C A B C, then the rest of A
    (first in, first out would make B and C wait behind all of A)."""
    run = Run.make(num_blocks=64, block_size=4, budget=16, max_rows=1)
    seq_ids = iter(range(100))
    for tenant, n in (("A", 20), ("B", 2), ("C", 2)):
        for _ in range(n):
            run.waiting.append(item(next(seq_ids), [5, 6, 7, 8], max_new=3, tenant=tenant))
    run.until_done()
    order = [r.tenant for s in run.schedules for r in s.admitted]
    assert order == ["A", "B", "C", "A", "B", "C"] + ["A"] * 18
    counters = run.scheduler.fairness.counters
    assert counters["B"] == counters["C"] == 2 * (4 + 2 * 2)  # two requests: 4 prompt + 2 fed-back tokens x 2


def test_vtc_lifts_a_new_adapter_to_the_least_served_active_one() -> None:
    """A tenant arriving late does not get a burst for its idle past: its counter starts at A's."""
    run = Run.make(num_blocks=64, block_size=4, budget=16, max_rows=1)
    for i in range(8):
        run.waiting.append(item(i, [5, 6, 7, 8], max_new=3, tenant="A"))
    for _ in range(12):
        run.step()
    assert run.scheduler.fairness.counters["A"] > 0
    for i in range(3):
        run.waiting.append(item(100 + i, [5, 6, 7, 8], max_new=3, tenant="D"))
    run.until_done()
    admitted = [r.tenant for s in run.schedules for r in s.admitted]
    late = admitted[admitted.index("D") - 1 :]
    assert late[:6] == ["A", "D", "A", "D", "A", "D"] or late[:6] == ["D", "A", "D", "A", "D", "A"], admitted


@pytest.mark.parametrize("budget", [1, 3])
def test_tiny_budgets_still_serve_every_row(budget: int) -> None:
    run = Run.make(num_blocks=64, block_size=4, budget=budget, max_rows=8)
    ps = prompts(4, [5, 2, 9])
    for i, p in enumerate(ps):
        run.waiting.append(item(i, p, max_new=4))
    run.until_done()
    assert max(len(s.chunks) for s in run.schedules) <= budget
    for row in run.finished:
        assert row.generated == alone(ps[row.seq.seq_id], 4)


def running_rows(run: Run) -> collections.Counter[str | None]:
    return collections.Counter(r.tenant for r in run.running)


def test_a_flood_holding_every_row_gives_one_up_at_once_when_another_tenant_arrives() -> None:
    """A holds all 4 rows with long requests; B's request arrives: the next step admits it (A's most recent
    row is preempted, and is recomputed later with exactly its own tokens), instead of waiting for a row of A
    to finish."""
    run = Run.make(num_blocks=200, block_size=4, budget=64, max_rows=4)
    ps = prompts(8, [5, 7, 6, 9])
    for i in range(6):
        run.waiting.append(item(i, ps[i], max_new=30, tenant="A"))
    for _ in range(3):
        run.step()
    assert running_rows(run) == {"A": 4} and not any(s.preempted for s in run.schedules)
    b = item(100, ps[7], max_new=3, tenant="B")
    run.waiting.append(b)
    schedule = run.step()
    assert schedule.admitted == [b]
    assert [r.seq.seq_id for r in schedule.preempted] == [3]  # A's most recently admitted row
    assert running_rows(run) == {"A": 3, "B": 1}
    run.until_done()
    assert b.generated == alone(ps[7], 3)
    for row in run.finished:
        if row.tenant == "A":
            assert row.generated == alone(ps[row.seq.seq_id], 30)
    assert run.scheduler.blocks.pool.num_used == 0


def test_a_flood_never_runs_more_than_its_fair_share_of_rows_while_others_wait() -> None:
    """A floods 24 requests; B and C keep one or two requests each in the queue, arriving as theirs finish.
    At every step where B or C has a row waiting, no tenant runs two rows more than it (max-min shares of the
    8 rows: A at most 4 while B and C run 2 each)."""
    run = Run.make(num_blocks=400, block_size=4, budget=64, max_rows=8)
    seq_ids = iter(range(1000))
    for _ in range(24):
        run.waiting.append(item(next(seq_ids), [5, 6, 7], max_new=12, tenant="A"))
    arrivals = {"B": 6, "C": 6}
    checked = 0
    for _ in range(400):
        for tenant in ("B", "C"):  # each keeps two requests in flight while it has some to send
            mine = [r for r in [*run.running, *run.waiting] if r.tenant == tenant]
            if len(mine) < 2 and arrivals[tenant]:
                arrivals[tenant] -= 1
                run.waiting.append(item(next(seq_ids), [8, 9], max_new=5, tenant=tenant))
        if not run.running and not run.waiting:
            break
        run.step()
        rows, waiting = run.shares[-1]
        for tenant in waiting:
            assert max(rows.values()) <= rows[tenant] + 1, (tenant, rows)
            checked += 1
    assert checked > 0 and not run.waiting and not run.running
    assert ({"A": 4, "B": 2, "C": 2}, {"A"}) in run.shares  # the shares the docstring names did occur
    assert len(run.finished) == 24 + 12


def test_a_lone_tenant_uses_every_row_and_a_quiet_one_leaves_it_the_rest() -> None:
    """Work-conserving: with nobody else, A runs on all 4 rows; with B running one row and nothing waiting,
    A runs on the other 3; nothing is preempted."""
    run = Run.make(num_blocks=200, block_size=4, budget=64, max_rows=4)
    run.waiting.append(item(100, [8, 9], max_new=40, tenant="B"))
    run.step()
    for i in range(10):
        run.waiting.append(item(i, [5, 6, 7], max_new=20, tenant="A"))
    run.step()
    assert running_rows(run) == {"A": 3, "B": 1}
    run.until_done()
    alone_run = Run.make(num_blocks=200, block_size=4, budget=64, max_rows=4)
    for i in range(10):
        alone_run.waiting.append(item(i, [5, 6, 7], max_new=20, tenant="A"))
    alone_run.step()
    assert running_rows(alone_run) == {"A": 4}
    alone_run.until_done()
    assert not any(s.preempted for s in [*run.schedules, *alone_run.schedules])


def test_equal_tenants_over_uneven_rows_are_never_preempted_for_fairness() -> None:
    """Three tenants with equal queues over 4 rows share them 2-1-1; the extra row moves by admission as rows
    finish, never by preemption (a one-row imbalance is not worth a recompute)."""
    run = Run.make(num_blocks=400, block_size=4, budget=64, max_rows=4)
    seq_ids = iter(range(100))
    for tenant in "ABC":
        for _ in range(6):
            run.waiting.append(item(next(seq_ids), [5, 6, 7], max_new=7, tenant=tenant))
    run.until_done()
    assert not any(s.preempted for s in run.schedules)
    assert [r.tenant for r in run.schedules[0].admitted] == ["A", "B", "C", "A"]


def test_fifo_admission_never_preempts_for_fairness() -> None:
    """The FIFO baseline (bench/bench_fairness.py) stays first come, first served: A keeps its 4 rows."""
    run = Run.make(num_blocks=200, block_size=4, budget=64, max_rows=4)
    run.scheduler.fairness.fifo = True
    for i in range(6):
        run.waiting.append(item(i, [5, 6, 7], max_new=30, tenant="A"))
    run.step()
    run.waiting.append(item(100, [8, 9], max_new=3, tenant="B"))
    schedule = run.step()
    assert not schedule.preempted and not schedule.admitted and running_rows(run) == {"A": 4}
