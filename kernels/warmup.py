"""Compile every kernel variant serving can ask for, before serving: no Triton compile inside an engine step.

A first launch with new constexprs compiles for seconds, inside a step, with the model lock held. The
variants a layer can launch are a small set that `kernels.variants.serving_variants` enumerates from the
layer's geometry (the same `variant_key` the launchers call), so launching each once on a scratch pool of
that geometry compiles exactly what serving will use:

    warmup(geometries, max_batch_tokens=2048, device=torch.device("cuda", 1))

Run it on the device the pools live on (it sets the device guard itself), after choosing the decode policy
(`kernels.set_decode_policy`: "shared" adds the shared-adapter decode variants). Geometries marked `sliced`
(members of sibling groups) also warm the multi-slice shrink of `kernels.triton_fused`. It runs under the
interpreter too (how the tests check it), where nothing compiles.

`warmup_attention(variants, device)` does the same for the paged decode attention (kernels/paged_attention.py):
one launch per `AttentionVariant` (a layer geometry, with or without a window / softcapping) on a scratch pool.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from kernels.dispatch import device_guard
from kernels.ia3_pool import IA3Pool
from kernels.metadata import build_decode_meta, build_prefill_meta
from kernels.paged_attention import AttentionVariant, decode_attention
from kernels.pool import LoraPool
from kernels.variants import BLOCK_R, DecodePolicy, LoraGeometry, Variant, ia3_variant_key, serving_variants

IA3_DTYPE = torch.float32  # the serving layers keep IA3 and DoRA vectors in float32 (multi/layers.py)


def warmup(
    geometries: Iterable[LoraGeometry],
    *,
    max_batch_tokens: int,
    device: torch.device | str,
    ia3: bool = True,
    policy: DecodePolicy | None = None,
) -> set[Variant]:
    """Launch every LoRA (and, with `ia3`, IA3) variant layers of these geometries can use; returns them.

    Args:
        geometries: one per distinct adapted layer shape (duplicates are fine); `sliced` ones (members of a
            sibling group) also warm the multi-slice shrink (`kernels.triton_fused`).
        max_batch_tokens: the most tokens one forward can carry.
        device: where the pools live.
        policy: the decode policy to warm for (default: the current one, `kernels.variants.decode_policy`);
            "shared" adds the shared-adapter decode variants (wide rank blocks).
    """
    device = torch.device(device)
    launched: set[Variant] = set()
    with device_guard(device):
        for g in set(geometries):
            launched |= _warm_lora(g, max_batch_tokens, device, policy)
            if ia3:
                launched |= _warm_ia3(g, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return launched


def _scratch_pool(g: LoraGeometry, rank: int, device: torch.device) -> LoraPool:
    """A pool of `g`'s geometry with one adapter of `rank` in slot 0 (its max rank picks the rank block)."""
    pool = LoraPool(
        g.in_features,
        g.out_features,
        budget_bytes=2 * (g.rank_capacity + 3) * 8 + rank * (g.in_features + g.out_features) * 4,
        num_slots=2,
        rank_capacity=g.rank_capacity,
        dtype=g.weight_dtype,
        device=device,
    )
    pool.load(0, torch.zeros(rank, g.in_features), torch.zeros(g.out_features, rank), 1.0)
    return pool


def _warm_lora(
    g: LoraGeometry, max_batch_tokens: int, device: torch.device, policy: DecodePolicy | None
) -> set[Variant]:
    from kernels import triton_fused as tf
    from kernels import triton_lora as tk
    from kernels import triton_shared_decode as sd

    pools: dict[int, LoraPool] = {}
    launched = set()
    variants = serving_variants(g, max_batch_tokens, policy)
    for v in sorted(variants, key=lambda v: (v.kernel, v.block_m, v.block_r)):
        decode = v.block_m == 0
        wide = v.block_r != BLOCK_R  # shared decode: the segment kernels with a rank block of v.block_r
        rank = min(v.block_r, g.rank_capacity) if wide else 1
        w = pools.setdefault(rank, _scratch_pool(g, rank, device)).weights
        tokens = 1 if decode else v.block_m  # a segment of block_m tokens picks BLOCK_M = block_m
        meta = (build_decode_meta([0]) if decode else build_prefill_meta([0], [tokens])).to(device)
        stage = "shrink" if "shrink" in v.kernel else "expand"
        sliced = v.kernel.endswith("_slices")
        if sliced:
            actual = tf.slices_variant(stage, [w, w], g.act_dtype, meta, shared=wide)
        else:
            block_r = sd.shared_block_r(w.max_rank) if wide else BLOCK_R
            actual = tk.lora_variant(stage, w, g.act_dtype, meta, decode=decode, block_r=block_r)
        if actual != v:  # variant_key and this scratch batch disagree: fix the batch, never skip the variant
            raise AssertionError(f"warm-up batch launches {actual}, not {v}")
        x = torch.zeros(tokens, g.in_features, dtype=g.act_dtype, device=device)
        y = torch.zeros(tokens, g.out_features, dtype=g.act_dtype, device=device)
        u = torch.zeros(tokens, g.rank_capacity, dtype=torch.float32, device=device)
        if sliced:  # two slices: the slice count is a grid axis, not part of the compiled variant
            u2 = torch.zeros(2, tokens, g.rank_capacity, dtype=torch.float32, device=device)
            tf.lora_shrink_slices(x, [w, w], meta, u2, shared=wide)
        elif wide:
            (sd.shared_shrink(x, w, meta, u) if stage == "shrink" else sd.shared_expand(y, u, w, meta))
        elif stage == "shrink":
            (tk.bgmv_shrink if decode else tk.sgmv_shrink)(x, w, meta, u)
        else:
            (tk.bgmv_expand if decode else tk.sgmv_expand)(y, u, w, meta)
        launched.add(v)
    return launched


def _warm_ia3(g: LoraGeometry, device: torch.device) -> set[Variant]:
    """Input side (feed-forward targets, out of place) on H_in; output side (IA3, DoRA, in place) on H_out."""
    from kernels import triton_ia3

    launched = set()
    for features, copy in ((g.in_features, True), (g.out_features, False)):
        pool = IA3Pool(
            features, budget_bytes=2 * 8 + features * 4, num_slots=2, dtype=IA3_DTYPE, device=device
        )
        pool.load(0, torch.ones(features))
        meta = build_decode_meta([0]).to(device)
        t = torch.zeros(1, features, dtype=g.act_dtype, device=device)
        triton_ia3.ia3_scale(t, pool.weights, meta, torch.empty_like(t) if copy else t)
        launched.add(ia3_variant_key(features, IA3_DTYPE, g.act_dtype, copy=copy))
    return launched


def warmup_attention(
    variants: Iterable[AttentionVariant], *, device: torch.device | str
) -> set[AttentionVariant]:
    """Launch the paged decode attention once per variant (two rows, one block each, on a two-block scratch pool
    of the variant's geometry): every variant serving launches is then compiled. Returns the variants."""
    device = torch.device(device)
    launched = set()
    with device_guard(device):
        for v in set(variants):
            k = torch.zeros(v.kv_heads, 2 * v.block_size, v.head_dim, dtype=v.dtype, device=device)
            q = torch.zeros(2, v.q_heads, v.head_dim, dtype=v.dtype, device=device)
            tables = torch.tensor([[1], [0]], device=device)
            lengths = torch.tensor([v.block_size, 1], device=device)
            decode_attention(
                q,
                k,
                k,
                tables,
                lengths,
                block_size=v.block_size,
                scale=1.0,
                window=v.block_size if v.window else None,
                softcap=1.0 if v.softcap else None,
                partition=v.partition,
            )
            launched.add(v)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return launched
