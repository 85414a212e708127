"""Multi-slice LoRA ops: shrink and expand a group of sibling modules that read the same input, one launch each.

A *group* is up to `MAX_SLICES` modules whose LoRA pools take the same activations `x` (q/k/v of an
attention block, gate/up of a gated MLP); slice s is the s-th module's pool. The semantics are those of
`kernels.lora_shrink` / `kernels.lora_expand` applied to every slice (same roundings), so a slice's result
equals the single-module op on its pool:

    u[s, t, j]  = sum_k x[t, k] * A_s[slot][j, k]       j < r_s[slot], slot = meta.token_slots[t] >= 0; else 0
    ys[s][t, n] <- round( ys[s][t, n] + scale_s[slot] * sum_{j < r_s[slot]} u~[s, t, j] * B_s[slot][n, j] )

Shapes: x (T, H_in) shared; u (n, T, R) float32 (R: the pools' common rank capacity); ys[s] (T, H_out_s),
any strides. On the torch backend the ops run the reference once per slice (`reference_*`; static decode
metadata is refused there, as by `lora_shrink`); on Triton one launch covers every slice
(`kernels.triton_fused`, under the weights' `device_guard`), with the single-module launch's programs: a
decode row's result is the single-module BGMV's bit for bit (batch-invariant), and static decode metadata
runs the per-token programs with fixed shapes. A mixed step's metadata runs as its `launch_parts()` (the
one-token rows as a decode batch, the longer rows as segments), as `kernels.dispatch`'s ops do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from kernels import reference
from kernels.dispatch import _check_meta, _lora_weights, _not_static, _rows, device_guard, resolve_backend
from kernels.errors import ShapeError
from kernels.metadata import BatchMeta
from kernels.pool import LoraPool, LoraWeights

MAX_SLICES = 3  # = kernels.triton_fused.MAX_SLICES (not imported: that module needs Triton)


def group_weights(pools: Sequence[LoraPool | LoraWeights]) -> list[LoraWeights]:
    """The pools' `LoraWeights`, checked to form a group: 1..MAX_SLICES slices on one device with one dtype,
    the same `in_features` (they read one x) and the same rank capacity (slices of one u buffer)."""
    ws = [_lora_weights(p) for p in pools]
    if not 1 <= len(ws) <= MAX_SLICES:
        raise ShapeError(f"a slice group has 1 to {MAX_SLICES} pools, got {len(ws)}; split larger groups")
    w0 = ws[0]
    for i, w in enumerate(ws[1:], 1):
        same = (w.in_features, w.rank_capacity, w.dtype, w.device)
        if same != (w0.in_features, w0.rank_capacity, w0.dtype, w0.device):
            raise ShapeError(
                f"slice {i} has (in_features, rank capacity, dtype, device) {same} but slice 0 has "
                f"{(w0.in_features, w0.rank_capacity, w0.dtype, w0.device)}; only pools that agree form a group"
            )
    return ws


def reference_shrink_slices(x: Tensor, ws: Sequence[LoraWeights], meta: BatchMeta, out: Tensor) -> Tensor:
    """The torch specification: `reference.lora_shrink` on every slice. out: (n, T, R) float32, zeroed."""
    for s, w in enumerate(ws):
        reference.lora_shrink(x, w, meta, out[s])
    return out


def reference_expand_slices(
    ys: Sequence[Tensor], u: Tensor, ws: Sequence[LoraWeights], meta: BatchMeta
) -> None:
    """The torch specification: `reference.lora_expand` on every slice, in place on ys[s]."""
    for s, w in enumerate(ws):
        reference.lora_expand(ys[s], u[s], w, meta)


def lora_shrink_slices(
    x: Tensor,
    pools: Sequence[LoraPool | LoraWeights],
    meta: BatchMeta,
    *,
    out: Tensor | None = None,
    backend: str | None = None,
    zeroed: bool = True,
) -> Tensor:
    """Shrink of every slice of a group in one launch. x: (T, H_in) or (..., H_in); returns u (n, T, R)
    float32 (`out`, zeroed first, when given). `zeroed=False` skips the zeroing (a memset launch on a GPU):
    then only the entries an expand reads are defined (tokens with a slot, j < r_s[slot]; every kernel and the
    reference write at least those), which is all a sibling group needs (adapters_core/multi/fused.py)."""
    ws = group_weights(pools)
    w0 = ws[0]
    _check_meta(meta, min(w.num_slots for w in ws), w0.device)
    x = _rows(x, "x", w0.in_features, meta, w0.device)
    shape = (len(ws), meta.num_tokens, w0.rank_capacity)
    if out is None:
        out = (torch.zeros if zeroed else torch.empty)(
            shape, dtype=torch.float32, device=w0.device
        )  # (n, T, R)
    elif tuple(out.shape) != shape or out.dtype != torch.float32 or out.device != w0.device:
        raise ShapeError(f"out must be float32 {shape} on {w0.device}, got {out.dtype} {tuple(out.shape)}")
    elif zeroed:
        out.zero_()
    torch_backend = resolve_backend(w0.device, backend) == "torch"
    if torch_backend:
        _not_static(meta, "lora_shrink_slices")
    else:
        from kernels import triton_fused
    with device_guard(w0.device):
        if meta.split is None:  # without views: host time on the serving path
            if torch_backend:
                return reference_shrink_slices(x, ws, meta, out)
            return triton_fused.lora_shrink_slices(x, ws, meta, out)
        for rows, part in meta.split.parts:  # a mixed step's decode tokens as a decode batch
            if torch_backend:
                reference_shrink_slices(x[rows], ws, part, out[:, rows])
            else:
                triton_fused.lora_shrink_slices(x[rows], ws, part, out[:, rows])
    return out


def lora_expand_slices(
    ys: Sequence[Tensor],
    u: Tensor,
    pools: Sequence[LoraPool | LoraWeights],
    meta: BatchMeta,
    *,
    backend: str | None = None,
) -> None:
    """Expand of every slice of a group in one launch, in place on ys[s] ((T, H_out_s) or (..., H_out_s)).
    u: (n, T, R) float32 from `lora_shrink_slices`."""
    ws = group_weights(pools)
    w0 = ws[0]
    if len(ys) != len(ws):
        raise ShapeError(f"{len(ys)} outputs for {len(ws)} slices; give one output per pool")
    _check_meta(meta, min(w.num_slots for w in ws), w0.device)
    y2 = [_rows(y, f"ys[{s}]", w.out_features, meta, w0.device) for s, (y, w) in enumerate(zip(ys, ws))]
    shape = (len(ws), meta.num_tokens, w0.rank_capacity)
    if tuple(u.shape) != shape or u.dtype != torch.float32 or u.device != w0.device:
        raise ShapeError(
            f"u must be float32 {shape} on {w0.device} (what lora_shrink_slices returns), got {u.dtype} "
            f"{tuple(u.shape)} on {u.device}"
        )
    torch_backend = resolve_backend(w0.device, backend) == "torch"
    if torch_backend:
        _not_static(meta, "lora_expand_slices")
    else:
        from kernels import triton_fused
    with device_guard(w0.device):
        for rows, part in meta.launch_parts():
            ys_part = y2 if part is meta else [y[rows] for y in y2]
            if torch_backend:
                reference_expand_slices(ys_part, u[:, rows], ws, part)
            else:
                triton_fused.lora_expand_slices(ys_part, u[:, rows], ws, part)
