"""Compile every kernel variant serving can ask for, before serving: no Triton compile inside an engine step.

A first launch with new constexprs compiles for seconds, inside a step, with the model lock held. The
variants a layer can launch are a small set that `kernels.variants.serving_variants` enumerates from the
layer's geometry (the same `variant_key` the launchers call), so launching each once on a scratch pool of
that geometry compiles exactly what serving will use:

    warmup(geometries, max_batch_tokens=2048, device=torch.device("cuda", 1))

Run it on the device the pools live on (it sets the device guard itself). It runs under the interpreter
too (how the tests check it), where nothing compiles.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from kernels.dispatch import device_guard
from kernels.ia3_pool import IA3Pool
from kernels.metadata import build_decode_meta, build_prefill_meta
from kernels.pool import LoraPool
from kernels.variants import LoraGeometry, Variant, ia3_variant_key, serving_variants

IA3_DTYPE = torch.float32  # the serving layers keep IA3 and DoRA vectors in float32 (multi/layers.py)


def warmup(
    geometries: Iterable[LoraGeometry],
    *,
    max_batch_tokens: int,
    device: torch.device | str,
    ia3: bool = True,
) -> set[Variant]:
    """Launch every LoRA (and, with `ia3`, IA3) variant layers of these geometries can use; returns them.

    Args:
        geometries: one per distinct adapted layer shape (duplicates are fine).
        max_batch_tokens: the most tokens one forward can carry.
        device: where the pools live.
    """
    device = torch.device(device)
    launched: set[Variant] = set()
    with device_guard(device):
        for g in set(geometries):
            launched |= _warm_lora(g, max_batch_tokens, device)
            if ia3:
                launched |= _warm_ia3(g, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return launched


def _warm_lora(g: LoraGeometry, max_batch_tokens: int, device: torch.device) -> set[Variant]:
    from kernels import triton_lora as tk

    pool = LoraPool(
        g.in_features,
        g.out_features,
        budget_bytes=2 * (g.rank_capacity + 3) * 8 + (g.in_features + g.out_features) * 4,
        num_slots=2,
        rank_capacity=g.rank_capacity,
        dtype=g.weight_dtype,
        device=device,
    )
    pool.load(0, torch.zeros(1, g.in_features), torch.zeros(g.out_features, 1), 1.0)
    w = pool.weights
    launched = set()
    for v in sorted(serving_variants(g, max_batch_tokens), key=lambda v: (v.kernel, v.block_m)):
        decode = v.kernel.startswith("bgmv")
        tokens = 1 if decode else v.block_m  # a segment of block_m tokens picks BLOCK_M = block_m
        meta = (build_decode_meta([0]) if decode else build_prefill_meta([0], [tokens])).to(device)
        stage = "shrink" if v.kernel.endswith("shrink") else "expand"
        actual = tk.lora_variant(stage, w, g.act_dtype, meta, decode=decode)
        if actual != v:  # variant_key and this scratch batch disagree: fix the batch, never skip the variant
            raise AssertionError(f"warm-up batch launches {actual}, not {v}")
        x = torch.zeros(tokens, g.in_features, dtype=g.act_dtype, device=device)
        y = torch.zeros(tokens, g.out_features, dtype=g.act_dtype, device=device)
        u = torch.zeros(tokens, g.rank_capacity, dtype=torch.float32, device=device)
        if stage == "shrink":
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
