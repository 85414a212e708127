"""BatchMeta builders: the docstring's worked example, invariants on random batches, clear errors."""

from __future__ import annotations

import random

import pytest
import torch

from kernels import ShapeError, build_decode_meta, build_prefill_meta


def test_worked_example_prefill() -> None:
    meta = build_prefill_meta([2, -1, 0, 2], [3, 2, 1, 2])
    assert meta.token_slots.tolist() == [2, 2, 2, -1, -1, 0, 2, 2]
    assert meta.token_order.tolist() == [5, 0, 1, 2, 6, 7]
    assert meta.seg_slots.tolist() == [0, 2]
    assert meta.seg_starts.tolist() == [0, 1]
    assert meta.seg_lens.tolist() == [1, 5]
    assert (meta.max_seg_len, meta.max_slot, meta.num_tokens, meta.decode) == (5, 2, 8, False)
    assert meta.segments() == [(0, 0, 1), (2, 1, 5)]


def test_worked_example_decode() -> None:
    meta = build_decode_meta([2, -1, 0, 2])
    assert meta.token_slots.tolist() == [2, -1, 0, 2]
    assert meta.token_order.tolist() == [2, 0, 3]
    assert meta.seg_slots.tolist() == [0, 2]
    assert meta.seg_starts.tolist() == [0, 1]
    assert meta.seg_lens.tolist() == [1, 2]
    assert meta.decode and meta.num_tokens == 4


def test_tensor_inputs_match_lists() -> None:
    a = build_prefill_meta(torch.tensor([1, 0, 1]), torch.tensor([2, 1, 3]))
    b = build_prefill_meta([1, 0, 1], [2, 1, 3])
    for field in ("token_slots", "token_order", "seg_starts", "seg_lens", "seg_slots"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
        assert getattr(a, field).dtype == torch.int64
    assert a.segments() == b.segments()


@pytest.mark.parametrize(
    ("slots", "lengths"),
    [([], []), ([-1, -1], [3, 1]), ([0, 1], [0, 0]), ([3, -1, 3], [0, 2, 1])],
    ids=["empty", "all_none", "zero_lengths", "some_zero"],
)
def test_degenerate_batches(slots: list[int], lengths: list[int]) -> None:
    meta = build_prefill_meta(slots, lengths)
    assert meta.num_tokens == sum(lengths)
    active = sum(n for s, n in zip(slots, lengths) if s >= 0)
    assert meta.token_order.numel() == active
    assert meta.num_segments == (1 if active else 0)
    assert meta.max_seg_len == active
    assert meta.max_slot == (max(s for s, n in zip(slots, lengths) if s >= 0 and n) if active else -1)


@pytest.mark.parametrize("seed", range(20))
def test_invariants_on_random_batches(seed: int) -> None:
    rng = random.Random(seed)
    n_rows = rng.randint(1, 30)
    slots = [rng.choice([-1, *range(rng.randint(1, 8))]) for _ in range(n_rows)]
    lengths = [rng.randint(0, 6) for _ in range(n_rows)]
    meta = build_prefill_meta(slots, lengths)
    expected_slots = [s for s, n in zip(slots, lengths) for _ in range(n)]
    assert meta.token_slots.tolist() == expected_slots

    order = meta.token_order.tolist()
    active = [t for t, s in enumerate(expected_slots) if s >= 0]
    assert sorted(order) == active  # a permutation of the tokens with an adapter
    # Stable sort by slot: tokens of one slot keep their original order.
    assert order == sorted(active, key=lambda t: expected_slots[t])

    assert list(meta.host_seg_slots) == sorted(set(meta.host_seg_slots))  # strictly increasing
    pos = 0
    for slot, start, length in meta.segments():
        assert start == pos and length >= 1
        assert {expected_slots[t] for t in order[start : start + length]} == {slot}
        pos += length
    assert pos == len(order)
    assert meta.seg_starts.tolist() == list(meta.host_seg_starts)
    assert meta.seg_lens.tolist() == list(meta.host_seg_lens)
    assert meta.seg_slots.tolist() == list(meta.host_seg_slots)
    assert meta.max_seg_len == max(meta.host_seg_lens, default=0)

    decode = build_decode_meta(slots)
    assert decode.token_slots.tolist() == slots
    assert decode.token_order.tolist() == sorted(
        (i for i, s in enumerate(slots) if s >= 0), key=lambda i: slots[i]
    )


def test_to_moves_tensors_and_keeps_host_fields() -> None:
    meta = build_prefill_meta([1, 0], [2, 2])
    moved = meta.to("cpu")
    assert moved.segments() == meta.segments()
    assert torch.equal(moved.token_order, meta.token_order)
    assert moved.device == torch.device("cpu")


@pytest.mark.parametrize(
    ("slots", "lengths", "message"),
    [
        ([0, 1], [1], "row_slots has 2 rows but row_lengths has 1"),
        ([0, -2], [1, 1], "row 1 has slot -2"),
        ([0, 1], [1, -1], "row 1 has length -1"),
        (torch.tensor([0.0, 1.0]), [1, 1], "1-D integer tensor"),
        ([0, True], [1, 1], "must hold ints"),
        (torch.zeros(2, 2, dtype=torch.int64), [1, 1], "1-D integer tensor"),
    ],
)
def test_bad_input_is_a_clear_error(slots: object, lengths: object, message: str) -> None:
    with pytest.raises(ShapeError, match=message):
        build_prefill_meta(slots, lengths)  # type: ignore[arg-type]
