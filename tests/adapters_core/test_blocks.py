"""The paged KV cache's block bookkeeping (adapters_core/paged/blocks.py): refcounts, reserved ids, prefix
hits keyed by adapter content hash, LRU eviction of cached blocks."""

from __future__ import annotations

import pytest

from adapters_core.paged.blocks import BlockPool, KVBlocks
from adapters_core.paged.plan import VIRTUAL


def test_reserved_blocks_are_never_handed_out_and_all_others_are() -> None:
    pool = BlockPool(6, 4, reserved=2)
    got = pool.allocate(4)
    assert got is not None and sorted(got) == [2, 3, 4, 5]
    assert pool.num_free == 0 and pool.num_used == 4
    assert pool.allocate(1) is None  # nothing left, nothing taken
    pool.release(got)
    assert pool.num_free == 4 and pool.num_used == 0
    with pytest.raises(ValueError, match="--kv-cache-bytes"):
        BlockPool(2, 4, reserved=2)


def test_a_failed_allocation_takes_nothing() -> None:
    pool = BlockPool(4, 4)
    assert pool.allocate(5) is None
    assert pool.num_free == 4


def test_double_free_raises() -> None:
    pool = BlockPool(4, 4)
    blocks = pool.allocate(2)
    assert blocks is not None
    pool.release(blocks)
    with pytest.raises(RuntimeError, match="released twice"):
        pool.release(blocks[:1])


def test_row_free_is_idempotent_and_returns_every_block() -> None:
    blocks = KVBlocks(BlockPool(8, 4, reserved=1))
    assert blocks.admit(1, "", list(range(10)), positions=10) == 0
    assert len(blocks.table(1)) == 3 and 0 not in blocks.table(1)
    assert blocks.grow(1, 13) and len(blocks.table(1)) == 4
    blocks.free(1)
    blocks.free(1)
    assert blocks.pool.num_used == 0 and blocks.pool.num_free == 7


def test_extra_blocks_are_held_beside_the_table_counted_at_admission_and_freed_with_the_row() -> None:
    blocks = KVBlocks(BlockPool(8, 4, reserved=1))  # 7 usable
    assert blocks.admit(1, "", [5], positions=1, extra=3) == 0
    assert len(blocks.table(1)) == 1 and blocks.pool.num_used == 4  # 1 in the table, 3 reserved beside it
    assert blocks.admit(2, "", [6], positions=1, extra=3) is None  # 1 + 3 > 3 free: nothing taken
    assert blocks.pool.num_used == 4 and 2 not in blocks
    assert blocks.admit(2, "", [6], positions=1, extra=2) == 0 and blocks.pool.num_free == 0
    assert blocks.fork(1, 3, 1, extra=1) is False  # no block for the child's reservation
    blocks.free(2)
    assert blocks.fork(1, 3, 4, extra=2) is None  # the full block shared, 2 reserved of its own
    assert blocks.pool.num_used == 6 and blocks.table(3) == blocks.table(1)
    blocks.free(1)
    blocks.free(1)
    assert blocks.pool.num_used == 3
    blocks.free(3)
    assert blocks.pool.num_used == 0 and blocks.pool.num_free == 7


def test_prefix_hits_share_blocks_with_refcounts() -> None:
    blocks = KVBlocks(BlockPool(16, 4))
    stream = [5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert blocks.admit(1, "h1", stream, positions=9) == 0
    blocks.commit(1, "h1", stream, computed=9)  # blocks 0 and 1 are full: cached
    assert blocks.pool.num_cached == 2
    # Same adapter version, same first 8 tokens: two blocks shared, the tail is the row's own.
    assert blocks.admit(2, "h1", [*stream[:8], 99, 98], positions=10) == 8
    t1, t2 = blocks.table(1), blocks.table(2)
    assert t2[:2] == t1[:2] and t2[2] != t1[2]
    assert [blocks.pool.refcount(b) for b in t1] == [2, 2, 1]
    # A stream that differs inside block 1 shares block 0 only.
    assert blocks.admit(3, "h1", [5, 6, 7, 8, 9, 0, 11, 12, 13], positions=9) == 4
    assert blocks.table(3)[0] == t1[0] and blocks.table(3)[1] != t1[1]
    blocks.free(1)
    assert [blocks.pool.refcount(b) for b in t1[:2]] == [2, 1]
    blocks.free(2)
    blocks.free(3)
    assert blocks.pool.num_used == 0
    assert blocks.hit_positions == 12


def test_a_reuploaded_adapter_never_reuses_the_old_versions_blocks() -> None:
    """Same name, new weights -> new content hash -> no hit, even for identical tokens; the base misses too."""
    blocks = KVBlocks(BlockPool(16, 4))
    stream = [VIRTUAL, VIRTUAL, 3, 4, 5, 6, 7, 8, 9]
    blocks.admit(1, "sha-old", stream, positions=9)
    blocks.commit(1, "sha-old", stream, computed=9)
    old = blocks.table(1)[:2]
    blocks.free(1)
    assert blocks.admit(2, "sha-new", stream, positions=9) == 0
    assert not set(blocks.table(2)) & set(old)
    assert blocks.admit(3, "", stream, positions=9) == 0  # the base model
    assert blocks.admit(4, "sha-old", stream, positions=9) == 8  # the old version itself still hits


def test_a_fully_cached_stream_still_leaves_its_last_position_to_compute() -> None:
    blocks = KVBlocks(BlockPool(8, 4))
    stream = list(range(8))
    blocks.admit(1, "", stream, positions=8)
    blocks.commit(1, "", stream, computed=8)
    assert blocks.admit(2, "", stream, positions=8) == 4  # block 1 recomputed: its last logits are needed


def test_idle_cached_blocks_are_reused_then_evicted_least_recently_released_first() -> None:
    blocks = KVBlocks(BlockPool(5, 2))  # 5 blocks of 2 positions
    a, b = [1, 2, 3, 4, 9], [5, 6, 7, 8, 9]
    for seq, stream in ((1, a), (2, b)):
        blocks.admit(seq, "", stream[:4], positions=4)
        blocks.commit(seq, "", stream[:4], computed=4)
    blocks.free(1)  # a's blocks go idle first (least recently released) ...
    blocks.free(2)  # ... then b's
    assert blocks.pool.num_free == 5 and blocks.pool.num_cached == 4
    assert blocks.admit(3, "", b, positions=5) == 4  # idle cached blocks still hit (+1 fresh block)
    blocks.free(3)  # b's blocks are now the most recently released
    # Two fresh blocks: the free one, then the LRU idle one (a's tail block: a prefix outlives its tail).
    assert blocks.admit(4, "", [0, 0, 0, 0], positions=4) == 0
    # b still hits; its fresh block evicts a's first block, the next least recently released.
    assert blocks.admit(5, "", b, positions=5) == 4, "b's blocks were evicted before a's"
    blocks.free(5)
    blocks.free(4)
    assert blocks.admit(6, "", a, positions=5) == 0, "a's blocks should have been evicted"


def test_admission_counts_idle_hits_against_the_free_blocks() -> None:
    """An idle cached block that a row reuses cannot also be allocated to it as a fresh block."""
    blocks = KVBlocks(BlockPool(2, 2))
    stream = [1, 2, 3]
    blocks.admit(1, "", stream[:2], positions=2)
    blocks.commit(1, "", stream[:2], computed=2)
    blocks.free(1)
    assert blocks.pool.num_free == 2
    assert blocks.admit(2, "", [1, 2, 3, 4, 5], positions=6) is None  # 1 hit + 2 fresh > 2 blocks
    assert blocks.pool.num_free == 2 and blocks.pool.num_cached == 1  # nothing taken, nothing evicted
    assert blocks.admit(2, "", stream, positions=4) == 2


def test_grow_fails_cleanly_when_blocks_run_out() -> None:
    blocks = KVBlocks(BlockPool(3, 2, reserved=1))
    blocks.admit(1, "", [1, 2, 3], positions=3)
    assert not blocks.grow(1, 5)
    assert len(blocks.table(1)) == 2 and blocks.pool.num_free == 0
