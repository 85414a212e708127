"""Adapter pools: byte budget, isolation of load/evict, clear errors."""

from __future__ import annotations

import pytest
import torch

from kernels import IA3Pool, LoraPool, PoolFullError, ShapeError, SlotError

H_IN, H_OUT = 24, 40


def adapter(rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rank, H_IN, generator=gen), torch.randn(H_OUT, rank, generator=gen), 0.5 + seed


def small_pool(pages: int, num_slots: int = 8, rank_capacity: int = 16) -> LoraPool:
    table = num_slots * (rank_capacity + 3) * 8
    page = (H_IN + H_OUT) * 4
    return LoraPool(
        H_IN,
        H_OUT,
        budget_bytes=table + pages * page,
        num_slots=num_slots,
        rank_capacity=rank_capacity,
        dtype=torch.float32,
    )


def snapshot(pool: LoraPool) -> dict[str, torch.Tensor]:
    names = ("a_pages", "bt_pages", "page_table", "ranks", "scales", "page_start")
    return {n: getattr(pool, n).clone() for n in names}


def test_budget_is_bytes_of_tables_plus_rank_units() -> None:
    pool = small_pool(pages=20)
    assert pool.num_pages == 20
    assert pool.page_bytes == (H_IN + H_OUT) * 4
    assert pool.bytes_for(8) == 8 * pool.page_bytes
    assert pool.used_bytes + pool.free_bytes == pool.budget_bytes
    pool.load(0, *adapter(8, 0))
    pool.load(5, *adapter(12, 1))
    assert pool.free_bytes == 0 and pool.used_bytes == pool.budget_bytes
    assert pool.weights.max_rank == 12
    assert (pool.rank(0), pool.rank(5), pool.rank(1)) == (8, 12, 0)
    assert pool.loaded_slots() == [0, 5]


def test_budget_exceeded_names_needed_and_free_bytes() -> None:
    pool = small_pool(pages=10)
    pool.load(0, *adapter(6, 0))
    with pytest.raises(PoolFullError) as info:
        pool.load(1, *adapter(5, 1))
    err = info.value
    assert (err.needed_bytes, err.free_bytes) == (5 * pool.page_bytes, 4 * pool.page_bytes)
    assert f"needs {5 * pool.page_bytes} bytes" in str(err) and f"only {4 * pool.page_bytes} of" in str(err)
    assert pool.rank(1) == 0 and pool.free_bytes == 4 * pool.page_bytes  # nothing half-loaded
    pool.load(1, *adapter(4, 1))  # exactly fits


def test_budget_too_small_for_tables() -> None:
    with pytest.raises(PoolFullError, match="slot tables alone need"):
        LoraPool(H_IN, H_OUT, budget_bytes=1000, num_slots=64, dtype=torch.float32)
    with pytest.raises(PoolFullError, match="the slot table needs"):
        IA3Pool(H_OUT, budget_bytes=100, num_slots=64, dtype=torch.float32)


def test_unsupported_dtypes_are_refused() -> None:
    with pytest.raises(ShapeError, match=r"float32, float16 or bfloat16, got torch\.float64"):
        LoraPool(H_IN, H_OUT, budget_bytes=1 << 20, num_slots=2, dtype=torch.float64)
    with pytest.raises(ShapeError, match=r"float32, float16 or bfloat16, got torch\.int8"):
        IA3Pool(H_OUT, budget_bytes=1 << 20, num_slots=2, dtype=torch.int8)


def test_slot_and_shape_errors() -> None:
    pool = small_pool(pages=40)
    pool.load(2, *adapter(4, 0))
    with pytest.raises(SlotError, match="already holds an adapter of rank 4; evict it first"):
        pool.load(2, *adapter(4, 1))
    with pytest.raises(SlotError, match=r"slot 8 is out of range: this pool has slots 0\.\.7"):
        pool.load(8, *adapter(4, 1))
    with pytest.raises(SlotError, match="slot 3 is empty"):
        pool.evict(3)
    a, b, s = adapter(4, 1)
    with pytest.raises(ShapeError, match="expected A"):
        pool.load(3, a, b.T, s)
    with pytest.raises(ShapeError, match=r"outside 1\.\.16"):
        pool.load(3, *adapter(17, 1))


def test_evict_then_load_touches_only_that_adapter() -> None:
    pool = small_pool(pages=40)
    for slot, rank in ((0, 8), (1, 5), (2, 12), (3, 7)):
        pool.load(slot, *adapter(rank, slot))
    before = snapshot(pool)
    victim_pages = pool.pages_of(1)

    pool.evict(1)
    after = snapshot(pool)
    for name in ("a_pages", "bt_pages", "page_table"):
        assert torch.equal(after[name], before[name]), name  # eviction writes no pages, no page-table row
    for name in ("ranks", "scales", "page_start"):
        changed = (after[name] != before[name]).nonzero().flatten().tolist()
        assert set(changed) <= {1}, name
    assert after["ranks"][1] == 0

    pool.load(6, *adapter(4, 9))  # reuses the freed pages
    new_pages = pool.pages_of(6)
    assert set(new_pages) <= set(victim_pages) | set(range(32, 40))
    final = snapshot(pool)
    for name in ("a_pages", "bt_pages"):
        changed_rows = (final[name] != after[name]).any(dim=1).nonzero().flatten().tolist()
        assert set(changed_rows) <= set(new_pages), name
    changed_slots = (final["page_table"] != after["page_table"]).any(dim=1).nonzero().flatten().tolist()
    assert changed_slots == [6]
    # The other adapters' weights read back bit-identical.
    for slot in (0, 2, 3):
        pages = torch.tensor(pool.pages_of(slot))
        a, b, _ = adapter(pool.rank(slot), slot)
        assert torch.equal(pool.a_pages[pages], a)
        assert torch.equal(pool.bt_pages[pages], b.T)
        assert torch.equal(final["a_pages"][pages], before["a_pages"][pages])


def test_fragmented_free_space_still_fits() -> None:
    pool = small_pool(pages=16, num_slots=9)
    for slot in range(8):
        pool.load(slot, *adapter(2, slot))
    for slot in range(0, 8, 2):
        pool.evict(slot)
    pool.load(8, *adapter(8, 8))  # 8 free pages, no two runs adjacent
    assert sorted(pool.pages_of(8)) == [0, 1, 4, 5, 8, 9, 12, 13]
    assert pool.page_start[8] == -1
    a, b, _ = adapter(8, 8)
    pages = torch.tensor(pool.pages_of(8))
    assert torch.equal(pool.a_pages[pages], a) and torch.equal(pool.bt_pages[pages], b.T)
    assert torch.equal(pool.page_table[8, :8], pages)


def test_allocator_prefers_a_contiguous_best_fit_run() -> None:
    pool = small_pool(pages=20, num_slots=4)
    pool.load(0, *adapter(4, 0))  # pages 0..3
    pool.load(1, *adapter(6, 1))  # 4..9
    pool.load(2, *adapter(3, 2))  # 10..12
    pool.evict(0)  # free: [0, 4) and [13, 20)
    pool.load(3, *adapter(4, 3))
    assert pool.pages_of(3) == [0, 1, 2, 3] and pool.page_start[3] == 0
    pool.evict(2)  # free: [10, 20) merged
    pool.load(2, *adapter(10, 2))
    assert pool.pages_of(2) == list(range(10, 20))


def test_ia3_pool_budget_and_isolation() -> None:
    pool = IA3Pool(16, budget_bytes=6 * 8 + 3 * 16 * 4, num_slots=6, dtype=torch.float32)
    assert pool.num_pages == 3
    vecs = [torch.randn(16) for _ in range(4)]
    for slot in range(3):
        pool.load(slot, vecs[slot].view(1, 16))  # PEFT's (1, in_features) layout is accepted
    with pytest.raises(PoolFullError, match="needs 64 bytes but 0 of"):
        pool.load(3, vecs[3])
    before = pool.vectors.clone()
    pool.evict(1)
    assert torch.equal(pool.vectors, before) and pool.page_of(1) is None
    pool.load(5, vecs[3])
    changed = (pool.vectors != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [pool.page_of(5)] == [1]
    for slot in (0, 2):
        assert torch.equal(pool.vectors[pool.page_of(slot)], vecs[slot])
    with pytest.raises(ShapeError, match="16 elements"):
        pool.load(4, torch.ones(15))
    with pytest.raises(SlotError, match="already holds"):
        pool.load(0, vecs[0])
