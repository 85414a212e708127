"""The shared-adapter decode kernels (kernels/triton_shared_decode.py) against the reference, and the choice:
opt-in (decode policy "shared"); the default runs BGMV, which is batch-invariant.

Under TRITON_INTERPRET=1; ranks 8/16/32/64 mixed in one batch (one rank block of 64: x read once), a rank
above 64 (two blocks), rows without an adapter, an empty slot, and an all-distinct batch (BGMV's case).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from kernel_cases import Case, assert_close, make_adapters, make_inputs, make_pool

from kernels import (
    BackendError,
    build_decode_meta,
    build_prefill_meta,
    decode_policy,
    lora_apply,
    lora_shrink,
    set_decode_policy,
    variants,
)
from kernels import triton_lora as tk
from kernels import triton_shared_decode as sd
from kernels.metadata import build_static_decode_meta

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
@pytest.mark.parametrize("policy", [None, "shared"], ids=["default", "shared"])
@pytest.mark.parametrize("case", [SHARED, DISTINCT], ids=lambda c: c.name)
def test_dispatch_picks_by_policy_and_matches_reference(case: Case, policy: str | None, monkeypatch) -> None:
    """The default policy runs BGMV even where the shared kernels would pay off (batch invariance); the
    "shared" policy takes them where `use_shared_decode` says so."""
    if policy is not None:
        monkeypatch.setattr(variants, "_policy", policy)
    calls: list[str] = []
    for name in ("shared_shrink", "shared_expand", "bgmv_shrink", "bgmv_expand"):
        real = getattr(sd, name)
        monkeypatch.setattr(sd, name, lambda *a, _r=real, _n=name, **k: (calls.append(_n), _r(*a, **k))[1])
    pool = make_pool(case, make_adapters(case), torch.float32)
    meta = case.meta(decode=True)
    assert sd.use_shared_decode(meta) == (case is SHARED)
    x, y = make_inputs(case, meta, torch.float32)
    got = lora_apply(y.clone(), x, pool, meta, backend="triton")
    kind = "shared" if case is SHARED and policy == "shared" else "bgmv"
    assert calls == [f"{kind}_shrink", f"{kind}_expand"]
    assert_close(got, lora_apply(y.clone(), x, pool, meta, backend="torch"), torch.float32)


@pytest.mark.parametrize(("env", "want"), [(None, "bgmv"), ("0", "bgmv"), ("1", "shared")])
def test_policy_default_and_switches(env: str | None, want: str) -> None:
    code = "import kernels; print(kernels.decode_policy())"
    environ = {k: v for k, v in os.environ.items() if k != variants.SHARED_ENV_VAR}
    if env is not None:
        environ[variants.SHARED_ENV_VAR] = env
    out = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == want
    previous = set_decode_policy("shared")
    try:
        assert decode_policy() == "shared"
        with pytest.raises(BackendError, match="unknown decode policy 'fast'"):
            set_decode_policy("fast")
    finally:
        set_decode_policy(previous)


def test_static_metadata_never_takes_the_shared_kernels(monkeypatch) -> None:
    monkeypatch.setattr(variants, "_policy", "shared")
    meta = build_static_decode_meta(torch.zeros(32, dtype=torch.long))  # one pseudo-segment of 32 rows
    assert not sd.use_shared_decode(meta) and not variants.takes_shared(meta)
    assert variants.takes_shared(build_decode_meta([0] * 32))
