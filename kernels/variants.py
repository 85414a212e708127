"""Which compiled variant of a kernel a launch uses: a pure function of the pool's geometry and the batch.

Triton compiles one binary per set of `tl.constexpr` values (and per specialisation of the integer
arguments), so a launch with values never seen before compiles (seconds on a GPU) in the middle of an
engine step. Everything a launch chooses per batch therefore comes from a small fixed set:

- `BLOCK_M` (segment kernels) is one of `BLOCK_M_CHOICES`, picked from the longest segment;
- the block width over features (`BLOCK_K` for shrink, `BLOCK_N` for expand, `BLOCK_F` for IA3) depends
  on the layer's width only;
- there is no split-K: every program reduces over all of H_in itself, so no launch depends on the batch's
  size for its reduction (and a row's result does not depend on its batch-mates: see `kernels.triton_lora`);
- batch-dependent integer arguments (`m_blocks`, `r_blocks`, the multi-slice `u` stride) are marked
  `do_not_specialize` in the kernels;
- the decode kernel is BGMV (per token) unless the decode policy is "shared" (below); the shared-adapter
  kernels' rank block (`shared_block_r`) comes from the loaded ranks, one of 16 / 32 / 64.

Decode policy (batch invariance vs. shared-adapter speed). Issue 18 wants a decode row's output bit-identical
alone and inside any batch. BGMV reduces every row on its own in an order fixed by the layer's geometry, so
it is batch-invariant. The shared-adapter kernels (`kernels.triton_shared_decode`: rows of one adapter in
`tl.dot` tiles, each A/B page read once per tile instead of once per row) sum in another order, and whether
a batch takes them depends on how many batch-mates share an adapter: a row's last bits would depend on its
batch-mates. So the default policy is "bgmv" (always per-token, invariant); "shared" is opt-in:

    SWAPYARD_SHARED_DECODE=1            # read once, when this module is imported
    kernels.set_decode_policy("shared") # or at run time, before `kernels.warmup` (it warms the policy's set)

Static decode metadata (a captured CUDA graph's) never takes the shared kernels: they read host segments.

The launchers in `kernels.triton_lora` / `kernels.triton_ia3` / `kernels.triton_fused` and `kernels.warmup`
all call `variant_key`, so the set warmed up at start-up is the set serving can ask for, by construction.
This module imports no Triton: the engine and the tests can enumerate variants anywhere.
"""

from __future__ import annotations

import functools
import os
from typing import Literal, NamedTuple

import torch

from kernels.errors import BackendError
from kernels.metadata import BatchMeta

Stage = Literal["shrink", "expand"]
DecodePolicy = Literal["bgmv", "shared"]

BLOCK_R = 16  # rank block: the padding a slot can cost is < 16 lanes, masked (no memory traffic)
BLOCK_M_CHOICES = (16, 32, 64)  # tokens per SGMV program
SHARED_ENV_VAR = "SWAPYARD_SHARED_DECODE"
SHARED_MIN_ROWS = 4  # rows per adapter from which a dot tile beats per-row programs
MAX_BLOCK_R = 64  # widest shared-decode rank block: ranks up to 64 read x once

_policy: DecodePolicy = (
    "shared" if os.environ.get(SHARED_ENV_VAR, "").strip().lower() in {"1", "true", "on", "yes"} else "bgmv"
)


def decode_policy() -> DecodePolicy:
    """The decode policy: "bgmv" (default, batch-invariant) or "shared" (see the module docstring)."""
    return _policy


def set_decode_policy(policy: str) -> DecodePolicy:
    """Set the decode policy ("bgmv" or "shared"); returns the previous one. Call it before `kernels.warmup`."""
    global _policy
    if policy not in ("bgmv", "shared"):
        raise BackendError(f"unknown decode policy {policy!r}; use 'bgmv' (batch-invariant) or 'shared'")
    previous, _policy = _policy, policy  # type: ignore[assignment]
    return previous


def use_shared_decode(meta: BatchMeta, min_rows_per_adapter: int = SHARED_MIN_ROWS) -> bool:
    """Whether the shared-adapter kernels would pay off on this batch: decode metadata whose adapted rows
    average >= `min_rows_per_adapter` per adapter. Pure (host fields only); False for static metadata, whose
    host segments describe nothing. The launchers take them only under the "shared" policy (`takes_shared`)."""
    if not meta.decode or meta.static or meta.num_segments == 0:
        return False
    return sum(meta.host_seg_lens) >= min_rows_per_adapter * meta.num_segments


def takes_shared(meta: BatchMeta) -> bool:
    """Whether a decode launch on `meta` runs the shared-adapter kernels: policy "shared" and a batch that
    qualifies (`use_shared_decode`). Under the default policy never (BGMV: batch-invariant)."""
    return _policy == "shared" and use_shared_decode(meta)


def shared_block_r(max_rank: int) -> int:
    """The shared-decode rank block: the largest loaded rank rounded up to a power of two, within [16, 64]."""
    return pow2_clamp(max_rank, BLOCK_R, MAX_BLOCK_R)


class Variant(NamedTuple):
    """One compiled kernel variant (with the layer geometry, what Triton's cache key depends on)."""

    kernel: str  # "{sgmv,bgmv}_{shrink,expand}[_slices]" (multi-slice: kernels.triton_fused) | "ia3_scale"
    features: int  # H_in (shrink), H_out (expand) or F (IA3): an integer argument Triton specialises on
    block_m: int  # tokens per program (SGMV); 0 for the per-token kernels
    block_f: int  # BLOCK_K (shrink), BLOCK_N (expand) or BLOCK_F (IA3)
    weight_dtype: torch.dtype
    act_dtype: torch.dtype
    copy: bool = False  # IA3 only: out of place (rows without an adapter are copied)
    block_r: int = BLOCK_R  # rank block: 16, or shared_block_r on shared decode; 0 for IA3


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) on host ints (`triton.cdiv` is a jitted function: ~10 µs per call from Python)."""
    return -(-a // b)


def pow2_clamp(n: int, lo: int, hi: int) -> int:
    """The power of two >= n, clamped to [lo, hi]."""
    p = 1
    while p < n:
        p *= 2
    return max(lo, min(hi, p))


def block_m_for(max_seg_len: int) -> int:
    """BLOCK_M of a segment launch: the smallest choice that covers the longest segment, at most 64."""
    return pow2_clamp(max_seg_len, BLOCK_M_CHOICES[0], BLOCK_M_CHOICES[-1])


@functools.lru_cache(maxsize=1024)  # called on every launch: a lookup, not the arithmetic
def variant_key(
    stage: Stage,
    features: int,
    weight_dtype: torch.dtype,
    act_dtype: torch.dtype,
    *,
    decode: bool,
    max_seg_len: int,
    block_r: int = BLOCK_R,
    sliced: bool = False,
) -> Variant:
    """The LoRA kernel variant a launch uses.

    Args:
        stage: "shrink" (features = H_in) or "expand" (features = H_out; the widest slice's when sliced).
        weight_dtype: the pool's dtype; act_dtype: the activations' (x for shrink, y for expand).
        decode: the per-token (BGMV) kernels; else the segment ones, with BLOCK_M from `max_seg_len` (the
            batch's `BatchMeta`) and rank block `block_r` (16, or `shared_block_r` on shared decode).
        sliced: the multi-slice kernels of `kernels.triton_fused` (same blocks as the single-module ones).
    """
    suffix = "_slices" if sliced else ""
    if decode:
        block_f = pow2_clamp(features, 16, 256)
        return Variant(f"bgmv_{stage}{suffix}", features, 0, block_f, weight_dtype, act_dtype)
    block_m, block_f = block_m_for(max_seg_len), pow2_clamp(features, 16, 128)
    return Variant(
        f"sgmv_{stage}{suffix}", features, block_m, block_f, weight_dtype, act_dtype, block_r=block_r
    )


@functools.lru_cache(maxsize=256)
def ia3_variant_key(
    features: int, vector_dtype: torch.dtype, act_dtype: torch.dtype, *, copy: bool
) -> Variant:
    """The IA3 kernel variant: one per width and side (copy = input side, out of place)."""
    return Variant("ia3_scale", features, 0, pow2_clamp(features, 16, 1024), vector_dtype, act_dtype, copy, 0)


class LoraGeometry(NamedTuple):
    """What an adapted linear layer's LoRA pool looks like to the kernels (see `serving_variants`)."""

    in_features: int
    out_features: int
    rank_capacity: int
    weight_dtype: torch.dtype
    act_dtype: torch.dtype
    sliced: bool = False  # a member of a sibling group (adapters_core/multi/fused.py): multi-slice shrink too


def serving_variants(
    geometry: LoraGeometry, max_batch_tokens: int, policy: DecodePolicy | None = None
) -> set[Variant]:
    """Every LoRA variant a layer of `geometry` can launch for batches of 1..max_batch_tokens tokens.

    Decode batches use the per-token kernels (one variant per stage); every other batch the segment ones,
    whose only batch-dependent choice is BLOCK_M, a function of the longest segment (<= the token count).
    Under the "shared" decode `policy` (default: the current one) decode batches may also take the segment
    kernels with a rank block of `shared_block_r(r)`, r <= the rank capacity. A `sliced` layer's shrink may
    run as the multi-slice launch (`kernels.triton_fused`; its expand is the layer's own, as serving runs it).
    """
    g = geometry
    block_ms = sorted({block_m_for(n) for n in range(1, min(max_batch_tokens, BLOCK_M_CHOICES[-1]) + 1)})
    block_rs = {BLOCK_R}
    if (policy or _policy) == "shared":
        block_rs |= {shared_block_r(r) for r in range(1, g.rank_capacity + 1)}
    launches: list[tuple[bool, int, int]] = [(True, 1, BLOCK_R)]  # (decode, max_seg_len, block_r)
    launches += [(False, m, r) for m in block_ms for r in sorted(block_rs)]
    stages: list[tuple[Stage, int, bool]] = [
        ("shrink", g.in_features, False),
        ("expand", g.out_features, False),
    ]
    if g.sliced:
        stages.append(("shrink", g.in_features, True))
    return {
        variant_key(
            stage,
            features,
            g.weight_dtype,
            g.act_dtype,
            decode=decode,
            max_seg_len=m,
            block_r=r,
            sliced=sliced,
        )
        for stage, features, sliced in stages
        for decode, m, r in launches
    }
