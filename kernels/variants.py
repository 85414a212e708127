"""Which compiled variant of a kernel a launch uses: a pure function of the pool's geometry and the batch.

Triton compiles one binary per set of `tl.constexpr` values (and per specialisation of the integer
arguments), so a launch with values never seen before compiles (seconds on a GPU) in the middle of an
engine step. Everything a launch chooses per batch therefore comes from a small fixed set:

- `BLOCK_M` (segment kernels) is one of `BLOCK_M_CHOICES`, picked from the longest segment;
- the block width over features (`BLOCK_K` for shrink, `BLOCK_N` for expand, `BLOCK_F` for IA3) depends
  on the layer's width only;
- there is no split-K: every program reduces over all of H_in itself, so no launch depends on the batch's
  size for its reduction (and a row's result does not depend on its batch-mates: see `kernels.triton_lora`);
- batch-dependent integer arguments (`m_blocks`) are marked `do_not_specialize` in the kernels.

The launchers in `kernels.triton_lora` / `kernels.triton_ia3` and `kernels.warmup` both call
`variant_key`, so the set warmed up at start-up is the set serving can ask for, by construction. This module
imports no Triton: the engine and the tests can enumerate variants anywhere.
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import torch

Stage = Literal["shrink", "expand"]

BLOCK_R = 16  # rank block: the padding a slot can cost is < 16 lanes, masked (no memory traffic)
BLOCK_M_CHOICES = (16, 32, 64)  # tokens per SGMV program


class Variant(NamedTuple):
    """One compiled kernel variant (with the layer geometry, what Triton's cache key depends on)."""

    kernel: str  # "sgmv_shrink" | "sgmv_expand" | "bgmv_shrink" | "bgmv_expand" | "ia3_scale"
    features: int  # H_in (shrink), H_out (expand) or F (IA3): an integer argument Triton specialises on
    block_m: int  # tokens per program (SGMV); 0 for the per-token kernels
    block_f: int  # BLOCK_K (shrink), BLOCK_N (expand) or BLOCK_F (IA3)
    weight_dtype: torch.dtype
    act_dtype: torch.dtype
    copy: bool = False  # IA3 only: out of place (rows without an adapter are copied)


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
) -> Variant:
    """The LoRA kernel variant a launch uses.

    Args:
        stage: "shrink" (features = H_in) or "expand" (features = H_out).
        weight_dtype: the pool's dtype; act_dtype: the activations' (x for shrink, y for expand).
        decode / max_seg_len: from the batch's `BatchMeta` (per-token kernels for decode metadata).
    """
    if decode:
        return Variant(f"bgmv_{stage}", features, 0, pow2_clamp(features, 16, 256), weight_dtype, act_dtype)
    block_m = block_m_for(max_seg_len)
    return Variant(f"sgmv_{stage}", features, block_m, pow2_clamp(features, 16, 128), weight_dtype, act_dtype)


@functools.lru_cache(maxsize=256)
def ia3_variant_key(
    features: int, vector_dtype: torch.dtype, act_dtype: torch.dtype, *, copy: bool
) -> Variant:
    """The IA3 kernel variant: one per width and side (copy = input side, out of place)."""
    return Variant("ia3_scale", features, 0, pow2_clamp(features, 16, 1024), vector_dtype, act_dtype, copy)


class LoraGeometry(NamedTuple):
    """What an adapted linear layer's LoRA pool looks like to the kernels (see `serving_variants`)."""

    in_features: int
    out_features: int
    rank_capacity: int
    weight_dtype: torch.dtype
    act_dtype: torch.dtype


def serving_variants(geometry: LoraGeometry, max_batch_tokens: int) -> set[Variant]:
    """Every LoRA variant a layer of `geometry` can launch for batches of 1..max_batch_tokens tokens.

    Decode batches use the per-token kernels (one variant per stage); every other batch the segment ones,
    whose only batch-dependent choice is BLOCK_M, a function of the longest segment (<= the token count).
    """
    g = geometry
    block_ms = {block_m_for(n) for n in range(1, min(max_batch_tokens, BLOCK_M_CHOICES[-1]) + 1)}
    stages: tuple[tuple[Stage, int], ...] = (("shrink", g.in_features), ("expand", g.out_features))
    out: set[Variant] = set()
    for stage, features in stages:
        for decode, max_seg_len in [(True, 1), *((False, m) for m in sorted(block_ms))]:
            out.add(
                variant_key(
                    stage, features, g.weight_dtype, g.act_dtype, decode=decode, max_seg_len=max_seg_len
                )
            )
    return out
