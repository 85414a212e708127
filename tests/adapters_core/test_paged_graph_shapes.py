"""Which shapes a `DecodeGraphRunner` captures (adapters_core/paged/graphs.py `capture_shapes`): batch buckets of
vLLM's capture sizes and width buckets of powers of two, the batch buckets coarsened until there are at most
`max_graphs` shapes; every row count up to the largest fits a bucket."""

from __future__ import annotations

import pytest

from adapters_core.paged.graphs import MAX_GRAPHS, batch_buckets, capture_shapes


def test_the_defaults_fit_without_coarsening() -> None:
    # the engine's defaults: 32 rows, 2,048 positions in blocks of 16 (+ 1 block of virtual positions)
    batches, widths = capture_shapes(32, 2048 // 16 + 1)
    assert batches == [1, 2, 4, 8, 16, 24, 32]
    assert widths == [1, 2, 4, 8, 16, 32, 64, 128, 129]
    assert len(batches) * len(widths) == 63


def test_many_rows_coarsen_the_batch_buckets_under_the_cap() -> None:
    # 256 rows of 8,192 positions: 35 batch buckets x 11 widths = 385 graphs at multiples of 8
    batches, widths = capture_shapes(256, 8192 // 16 + 1)
    assert len(widths) == 11
    assert batches == [1, 2, 4, 8, 16, 32, 64, 128, 192, 256]
    assert len(batches) * len(widths) == 110 <= MAX_GRAPHS


@pytest.mark.parametrize("max_batch", [1, 3, 8, 40, 100, 256, 1024])
@pytest.mark.parametrize("max_graphs", [1, 16, 128])
def test_every_row_count_has_a_bucket(max_batch: int, max_graphs: int) -> None:
    batches, widths = capture_shapes(max_batch, 300, max_graphs)
    assert batches == sorted(set(batches)) and batches[-1] == max_batch and batches[0] == 1
    assert widths[-1] == 300
    # the cap holds unless even the coarsest buckets (powers of two, then max_batch) exceed it
    coarsest = batch_buckets(max_batch, 1 << max_batch.bit_length())
    assert len(batches) * len(widths) <= max(max_graphs, len(coarsest) * len(widths))


def test_batch_buckets_align() -> None:
    assert batch_buckets(40) == [1, 2, 4, 8, 16, 24, 32, 40]
    assert batch_buckets(100, 32) == [1, 2, 4, 8, 16, 32, 64, 96, 100]
    assert batch_buckets(3, 64) == [1, 2, 3]
