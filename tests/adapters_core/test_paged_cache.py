"""The paged KV pool (issue 16): written in place, retained memory of a decode step independent of context
length, and plans the pool cannot serve refused with a clear error (never garbage)."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from arch_configs import FAMILIES, VOCAB

from adapters_core.errors import AdapterNotFoundError, UnsupportedError
from adapters_core.multi import MultiAdapterModel
from adapters_core.paged import VIRTUAL, SeqChunk, StepPlan, attention
from bench.alloc import AllocCounter, paged_decode_counter

BS = 4


def _model(name: str = "llama") -> MultiAdapterModel:
    return MultiAdapterModel(FAMILIES[name].build())


def _prompt(n: int, seed: int = 0) -> list[int]:
    return torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _pool(model: MultiAdapterModel) -> list[torch.Tensor]:
    pool = model._paged_state.pool  # type: ignore[attr-defined]
    return [*pool.keys, *pool.values]


@torch.no_grad()
def test_decode_writes_only_the_new_tokens_slots_in_place() -> None:
    model = _model()
    model.init_kv_cache(num_blocks=16, block_size=BS)
    a, b = [9, 3, 12], [5, 7]  # two rows, blocks deliberately out of order
    model.paged_step(StepPlan([SeqChunk(0, None, _prompt(10), 0, a), SeqChunk(1, None, _prompt(6, 1), 0, b)]))
    before = [t.clone() for t in _pool(model)]
    pointers = [t.untyped_storage().data_ptr() for t in _pool(model)]
    # row 0 decodes stream position 10 -> block a[2] = 12, offset 2; row 1 position 6 -> block 7, offset 2
    model.paged_step(StepPlan([SeqChunk(0, None, [4], 10, a), SeqChunk(1, None, [8], 6, b)]))
    written = {12 * BS + 2, 7 * BS + 2}
    for old, new, ptr in zip(before, _pool(model), pointers):
        assert new.untyped_storage().data_ptr() == ptr  # the pool is never reallocated or copied
        changed = {int(s) for s in (old != new).any(dim=2).any(dim=0).nonzero().flatten()}  # (Hkv, slots, hd)
        assert changed == written


@torch.no_grad()
def _decode_retains(context: int, paged: bool) -> int:
    """Bytes a decode step of 4 rows at `context` tokens keeps alive (logits dropped): the paged step, or the bare
    base's step over transformers' DynamicCache (the baseline: it re-allocates its whole cache every step)."""
    prompts = [_prompt(context, seed=r) for r in range(4)]
    if paged:
        model = _model()
        model.init_kv_cache(num_blocks=4 * (context // BS + 1) + 1, block_size=BS)
        tables = [
            list(range(1 + r * (context // BS + 1), 1 + (r + 1) * (context // BS + 1))) for r in range(4)
        ]
        model.paged_step(StepPlan([SeqChunk(r, None, p, 0, tables[r]) for r, p in enumerate(prompts)]))
        with AllocCounter() as mode:
            model.paged_step(StepPlan([SeqChunk(r, None, [5], context, tables[r]) for r in range(4)]))
        return mode.retained()
    base = FAMILIES["llama"].build()
    cache = base(input_ids=torch.tensor(prompts), use_cache=True).past_key_values
    with AllocCounter() as mode:
        cache = base(input_ids=torch.full((4, 1), 5), past_key_values=cache, use_cache=True).past_key_values
    return mode.retained()


def test_decode_step_retains_no_memory_that_grows_with_context() -> None:
    paged = [_decode_retains(n, paged=True) for n in (32, 256)]
    assert paged[0] == paged[1], paged  # nothing per step grows with the context: the pool is preallocated
    baseline = [_decode_retains(n, paged=False) for n in (32, 256)]
    assert baseline[1] > baseline[0]  # the measure sees a cache that grows: DynamicCache's torch.cat per step


def _decode_peak(context: int) -> int:
    """Peak bytes a paged decode step of 4 rows at `context` tokens has alive at once."""
    return paged_decode_counter(_model(), [_prompt(context, r) for r in range(4)], BS).peak


def test_decode_step_peak_memory_is_bounded_by_the_key_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Long streams attend tile by tile: the transient gather does not grow with the context (one layer's keys
    and values of 4 rows at 512 tokens would be 4·2·512·8·4·2 = 262 KB; the growth must stay far below)."""
    one_layer = 4 * 2 * 512 * 8 * 4 * 2
    monkeypatch.setattr(attention, "KEY_TILE", 32)
    tiled = _decode_peak(512) - _decode_peak(64)
    assert tiled < one_layer // 4, tiled
    monkeypatch.setattr(attention, "KEY_TILE", 1 << 20)  # one gather of the whole stream: the measure sees it
    assert _decode_peak(512) - _decode_peak(64) > one_layer // 2


@pytest.fixture(scope="module")
def ready() -> MultiAdapterModel:
    model = _model()
    model.init_kv_cache(num_blocks=8, block_size=BS)
    return model


@pytest.mark.parametrize(
    ("chunk", "says"),
    [
        (SeqChunk(0, None, _prompt(9), 0, [1, 2]), "3 blocks needed"),  # 9 positions need 3 blocks of 4
        (SeqChunk(0, None, [5], 8, [1, 2]), "3 blocks needed"),  # decode at position 8 needs block 3
        (SeqChunk(0, None, _prompt(3), 0, [0]), "reserved scratch block"),
        (SeqChunk(0, None, _prompt(3), 0, [8]), "outside the pool's blocks"),
        (SeqChunk(0, None, [VIRTUAL, 5], 0, [1]), "must be VIRTUAL"),  # the base opens no virtual positions
        (SeqChunk(0, None, [VOCAB + 3], 0, [1]), "outside the vocabulary"),
        (SeqChunk(0, None, [], 0, [1]), "at least one token"),
    ],
)
def test_plans_the_pool_cannot_serve_are_refused(
    ready: MultiAdapterModel, chunk: SeqChunk, says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        ready.paged_step(StepPlan([chunk]))


def test_unknown_adapter_and_duplicate_rows_are_refused(ready: MultiAdapterModel) -> None:
    with pytest.raises(AdapterNotFoundError, match="no adapter named 'nope'"):
        ready.paged_step(StepPlan([SeqChunk(0, "nope", [5], 0, [1])]))
    with pytest.raises(ValueError, match="every seq_id at most once"):
        ready.paged_step(StepPlan([SeqChunk(0, None, [5], 0, [1]), SeqChunk(0, None, [6], 0, [2])]))


def test_paged_step_needs_the_pool_and_a_supported_base() -> None:
    with pytest.raises(RuntimeError, match="init_kv_cache"):
        _model().paged_step(StepPlan([SeqChunk(0, None, [5], 0, [1])]))
    t5 = _model("t5")
    assert t5.paged_support() is None  # encoder-decoders run on it (paged/seq2seq.py)


def test_alibi_bases_page_through_their_family_adapter_others_say_why() -> None:
    """BLOOM and Falcon run on the paged path (paged/families.py; parity in test_paged_parity.py); MPT's ALiBi
    comes from an attention mask the paged path does not build, so it is refused by name."""
    assert _model("bloom").paged_support() is None
    assert _model("falcon").paged_support() is None
    torch.manual_seed(0)
    mpt_config = tf.MptConfig(d_model=32, n_heads=4, n_layers=2, vocab_size=VOCAB, expansion_ratio=2)
    mpt = MultiAdapterModel(tf.MptForCausalLM(mpt_config).eval())
    assert "ALiBi" in (mpt.paged_support() or "")
    with pytest.raises(UnsupportedError, match="ALiBi"):
        mpt.init_kv_cache(8, BS)


def test_block_bytes_and_stream_prefix() -> None:
    model = _model()
    heads = model._prompts.cache_heads
    assert model.kv_block_bytes(16) == 2 * 16 * 4 * sum(h * d for h, d in heads)  # float32, K and V
    assert model.reserved_blocks == 1
    assert model.stream_prefix_length(None) == 0


@torch.no_grad()
def test_a_row_reuses_another_rows_full_prefix_blocks() -> None:
    """Prefix caching's model side: a row whose table starts with another row's full blocks (same adapter, same
    tokens) prefills only the rest (start = cached positions) and gets the logits of its whole prompt alone."""
    model = _model()
    model.init_kv_cache(num_blocks=16, block_size=BS)
    shared = _prompt(8, seed=3)  # two full blocks
    first, second = shared + _prompt(3, seed=4), shared + _prompt(5, seed=5)
    model.paged_step(StepPlan([SeqChunk(0, None, first, 0, [6, 2, 9])]))
    got = model.paged_step(StepPlan([SeqChunk(1, None, second[8:], 8, [6, 2, 4, 11])]))[0]
    base = FAMILIES["llama"].build()
    want = base(input_ids=torch.tensor([second])).logits[0, -1]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    alone = model.paged_step(StepPlan([SeqChunk(2, None, second[8:], 8, [5, 7, 4, 11])]))[
        0
    ]  # blocks 5, 7 empty
    assert not torch.allclose(alone, want, atol=1e-3)  # so the reused blocks really carried the prefix
