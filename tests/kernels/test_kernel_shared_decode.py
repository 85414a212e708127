"""The shared-adapter decode kernels (kernels/triton_shared_decode.py) against the reference, and the choice.

Under TRITON_INTERPRET=1; ranks 8/16/32/64 mixed in one batch (one rank block of 64: x read once), a rank
above 64 (two blocks), rows without an adapter, an empty slot, and an all-distinct batch (BGMV's case).
"""

from __future__ import annotations

import pytest
import torch
from kernel_cases import Case, assert_close, make_adapters, make_inputs, make_pool

from kernels import build_decode_meta, build_prefill_meta, lora_apply, lora_shrink
from kernels import triton_lora as tk
from kernels import triton_shared_decode as sd

SHARED = Case(  # 26 rows over 4 adapters of ranks 8/16/32/64, scattered, plus -1 rows and an empty slot
    "shared", 40, 56, (8, 16, 32, 64, 0), tuple([0, 3, 1, 2, -1, 3, 0, 4, 2, 1, 3, 3, 0] * 2), (1,) * 26
)
WIDE = Case("wide_rank", 24, 40, (100, 8), (0, 1, 0, 0, 1, 0, 1, 1), (1,) * 8)
DISTINCT = Case("all_distinct", 40, 56, (8, 16, 32, 64), (3, 1, 0, 2), (1,) * 4)

needs_interpreter = pytest.mark.skipif(not tk.INTERPRETED, reason="CPU Triton tests need TRITON_INTERPRET=1")


def test_choice_is_rows_per_adapter() -> None:
    assert sd.use_shared_decode(build_decode_meta(list(SHARED.row_slots)))  # 24 adapted rows / 5 slots
    assert not sd.use_shared_decode(build_decode_meta(list(DISTINCT.row_slots)))
    assert not sd.use_shared_decode(build_decode_meta([0, 0, 0, -1, -1, -1, 1]))  # 4 rows / 2 slots < 4
    assert sd.use_shared_decode(build_decode_meta([0, 0, 0, 0, -1, 1, 1, 1, 1]))  # 8 / 2
    assert not sd.use_shared_decode(build_prefill_meta([0, 0], [3, 3]))  # prefill: the segment kernels
    assert not sd.use_shared_decode(build_decode_meta([-1, -1]))
    assert sd.use_shared_decode(build_decode_meta([0, 0]), min_rows_per_adapter=2)
    assert [sd.shared_block_r(r) for r in (1, 8, 16, 17, 32, 64, 100)] == [16, 16, 16, 32, 32, 64, 64]


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("case", [SHARED, WIDE, DISTINCT], ids=lambda c: c.name)
def test_shared_kernels_match_reference(case: Case, dtype: torch.dtype) -> None:
    pool = make_pool(case, make_adapters(case), dtype)
    meta = case.meta(decode=True)
    x, y = make_inputs(case, meta, dtype)
    w = pool.weights
    u_ref = lora_shrink(x, pool, meta, backend="torch")
    y_ref = lora_apply(y.clone(), x, pool, meta, backend="torch")
    u = sd.shared_shrink(x, w, meta, torch.zeros_like(u_ref))
    out = sd.shared_expand(y.clone(), u_ref.clone(), w, meta)
    assert_close(u, u_ref, torch.float32 if dtype == torch.float32 else dtype)
    assert_close(out, y_ref, dtype)
    untouched = torch.tensor([s < 0 or case.ranks[s] == 0 for s in meta.token_slots.tolist()])
    assert torch.equal(out[untouched], y[untouched])
    assert not torch.equal(out[~untouched], y[~untouched])


@needs_interpreter
@pytest.mark.parametrize("case", [SHARED, DISTINCT], ids=lambda c: c.name)
def test_dispatch_picks_shared_or_bgmv_and_matches_reference(case: Case, monkeypatch) -> None:
    calls: list[str] = []
    for name in ("shared_shrink", "shared_expand", "bgmv_shrink", "bgmv_expand"):
        real = getattr(sd, name)
        monkeypatch.setattr(sd, name, lambda *a, _r=real, _n=name, **k: (calls.append(_n), _r(*a, **k))[1])
    pool = make_pool(case, make_adapters(case), torch.float32)
    meta = case.meta(decode=True)
    x, y = make_inputs(case, meta, torch.float32)
    got = lora_apply(y.clone(), x, pool, meta, backend="triton")
    kind = "shared" if case is SHARED else "bgmv"
    assert calls == [f"{kind}_shrink", f"{kind}_expand"]
    assert_close(got, lora_apply(y.clone(), x, pool, meta, backend="torch"), torch.float32)
