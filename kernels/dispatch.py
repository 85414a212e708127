"""The public ops: validate, pick a backend, call the Triton kernels or the PyTorch reference.

Backend choice, per call: the `backend=` argument, else the environment variable `SWAPYARD_KERNELS`
(`auto` | `triton` | `torch`, default `auto`). `auto` runs Triton on CUDA tensors when Triton is installed
and the reference everywhere else. Forcing `triton` on CPU tensors needs `TRITON_INTERPRET=1` (how the
tests run the kernels); it is an error otherwise, never a silent fall-back.

Shapes: `T` tokens (`BatchMeta.num_tokens`), `S` slots, `R` = `LoraWeights.rank_capacity`. Activations are
2-D `(T, H)` with any strides (a column slice of a fused projection works), or N-D `(..., H)` when a view to
`(T, H)` exists; N-D inputs are updated through that view, so in-place ops stay in place.

Devices: Triton launches on the *current* CUDA device, so every Triton launch group runs under
`device_guard(tensors' device)`; a pool on cuda:1 never launches on cuda:0 whatever the calling thread set.

Cost per call: whether Triton is installed is looked up once (the environment variable is still read on
every call, so changing it takes effect); `lora_apply` validates once and lets the Triton
shrink write its `u` without zeroing it first (no split-K: nothing accumulates into it).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from typing import Literal

import torch
from torch import Tensor

from kernels import grouped, reference, static_bgmv
from kernels.errors import BackendError, ShapeError
from kernels.ia3_pool import IA3Pool, IA3Weights
from kernels.metadata import BatchMeta
from kernels.pool import LoraPool, LoraWeights

ENV_VAR = "SWAPYARD_KERNELS"
Backend = Literal["triton", "torch"]


def resolve_backend(device: torch.device, backend: str | None = None) -> Backend:
    """The backend an op on tensors of `device` runs with (see the module docstring for the rules)."""
    choice = backend or os.environ.get(ENV_VAR) or "auto"
    if choice == "auto" and device.type == "cuda":  # the serving case, first: no string work, no import
        return "triton" if _has_triton() else "torch"
    choice = choice.strip().lower()
    if choice not in ("auto", "triton", "torch"):
        raise BackendError(
            f"unknown kernels backend {choice!r} (from backend= or {ENV_VAR}); use auto, triton or torch"
        )
    has_triton = _has_triton()
    if choice == "torch" or (choice == "auto" and not (device.type == "cuda" and has_triton)):
        return "torch"
    if not has_triton:
        raise BackendError(
            "backend 'triton' was forced but Triton is not installed (pip install 'swapyard[triton]')"
        )
    if device.type != "cuda":
        from kernels import triton_lora

        if not triton_lora.INTERPRETED:
            raise BackendError(
                f"backend 'triton' needs CUDA tensors, got {device.type}; on CPU set TRITON_INTERPRET=1 before "
                "importing kernels (tests do), or use backend 'torch'"
            )
    return "triton"


@functools.cache
def _has_triton() -> bool:
    """Looked up once: `find_spec` scans the import path (tens of microseconds, on every op before)."""
    return importlib.util.find_spec("triton") is not None


def device_guard(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """What a Triton launch group runs under: `torch.cuda.device(device)` for CUDA tensors (Triton launches
    on the current device, which need not be the tensors'), nothing otherwise (CPU, the interpreter)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


# -- validation -----------------------------------------------------------------------------------------


def _rows(t: Tensor, name: str, features: int, meta: BatchMeta, device: torch.device) -> Tensor:
    """`t` as (T, features): itself when 2-D, else a view (never a copy, so in-place updates land)."""
    if t.dim() < 2 or t.shape[-1] != features:
        raise ShapeError(f"{name} must be (T, {features}) or (..., {features}), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ShapeError(f"{name} must be a floating tensor, got {t.dtype}")
    if t.device != device:
        raise ShapeError(f"{name} is on {t.device} but the adapter weights are on {device}")
    if t.dim() > 2:
        try:
            t = t.view(-1, features)
        except RuntimeError as err:
            raise ShapeError(
                f"{name} of shape {tuple(t.shape)} cannot be viewed as (T, {features}): {err}"
            ) from err
    if t.shape[0] != meta.num_tokens:
        raise ShapeError(f"{name} has {t.shape[0]} tokens but the batch metadata has {meta.num_tokens}")
    return t


def _check_meta(meta: BatchMeta, num_slots: int, device: torch.device) -> None:
    if meta.device != device:
        raise ShapeError(
            f"batch metadata is on {meta.device} but the adapter weights are on {device}; use meta.to()"
        )
    if meta.max_slot >= num_slots:
        raise ShapeError(
            f"batch uses slot {meta.max_slot} but the pool has {num_slots} slots (0..{num_slots - 1})"
        )


def _not_static(meta: BatchMeta, op: str) -> None:
    if meta.static:
        raise ShapeError(
            f"{op} on the torch backend reads host segments, which static decode metadata does not have; "
            "use lora_apply (its per-token path) or the Triton backend"
        )


def _lora_weights(weights: LoraPool | LoraWeights) -> LoraWeights:
    if isinstance(weights, LoraPool):
        return weights.weights  # its arenas and tables are contiguous by construction
    w = weights
    if w.a_pages.stride(1) != 1 or w.bt_pages.stride(1) != 1 or not w.page_table.is_contiguous():
        raise ShapeError("LoraWeights pages must have contiguous rows and page_table must be contiguous")
    return w


def _u_buffer(u: Tensor, w: LoraWeights, meta: BatchMeta) -> Tensor:
    expected = (meta.num_tokens, w.rank_capacity)
    if tuple(u.shape) != expected or u.dtype != torch.float32 or u.device != w.device:
        raise ShapeError(
            f"u must be float32 {expected} on {w.device} (what lora_shrink returns), got {u.dtype} "
            f"{tuple(u.shape)} on {u.device}"
        )
    return u


# -- LoRA -----------------------------------------------------------------------------------------------


def lora_shrink(
    x: Tensor,
    weights: LoraPool | LoraWeights,
    meta: BatchMeta,
    *,
    out: Tensor | None = None,
    backend: str | None = None,
) -> Tensor:
    """LoRA shrink: project every token onto its slot's rank-r subspace.

    Semantics:
        u[t, j] = sum_k x[t, k] * A[s][j, k]    for j < r[s], s = meta.token_slots[t] >= 0
        u[t, j] = 0                              otherwise (j >= r[s], slot -1, or an empty slot)
    with x cast to the weights' dtype and the sum accumulated in float32.

    Args:
        x:       (T, H_in) activations, float32 / float16 / bfloat16.
        weights: a `LoraPool` or its `LoraWeights`; A[s] is slot s's lora_A.weight (r[s], H_in).
        meta:    `BatchMeta` of the batch; decode metadata runs the per-token kernel, prefill the segment one.
        out:     optional float32 (T, R) buffer to write (it is zeroed first); R = weights.rank_capacity.
    Returns:
        u: (T, R) float32.
    """
    w = _lora_weights(weights)
    _check_meta(meta, w.num_slots, w.device)
    x = _rows(x, "x", w.in_features, meta, w.device)
    if out is None:
        out = torch.zeros(meta.num_tokens, w.rank_capacity, dtype=torch.float32, device=w.device)  # (T, R)
    else:
        _u_buffer(out, w, meta).zero_()
    if resolve_backend(w.device, backend) == "torch":
        _not_static(meta, "lora_shrink")
        for rows, part in meta.launch_parts():
            reference.lora_shrink(x[rows], w, part, out[rows])
        return out
    from kernels import triton_lora

    with device_guard(w.device):
        if meta.split is None:
            return triton_lora.lora_shrink(x, w, meta, out)
        for rows, part in meta.split.parts:
            triton_lora.lora_shrink(x[rows], w, part, out[rows])
    return out


def lora_expand(
    y: Tensor, u: Tensor, weights: LoraPool | LoraWeights, meta: BatchMeta, *, backend: str | None = None
) -> Tensor:
    """LoRA expand: add every token's scaled rank-r update to `y`, in place.

    Semantics:
        y[t, n] <- round( y[t, n] + scale[s] * sum_{j < r[s]} u~[t, j] * B[s][n, j] )
    for s = meta.token_slots[t] >= 0 with r[s] > 0; every other row of y is left untouched. u~ is u rounded
    to the weights' dtype; the sum and the addition are float32 and `round` casts once to y's dtype.

    Args:
        y:       (T, H_out) output of the base layer, float32 / float16 / bfloat16; updated in place.
        u:       (T, R) float32 from `lora_shrink`.
        weights: a `LoraPool` or its `LoraWeights`; B[s] is slot s's lora_B.weight (H_out, r[s]).
        meta:    `BatchMeta` of the batch.
    Returns:
        y (the same tensor).
    """
    w = _lora_weights(weights)
    _check_meta(meta, w.num_slots, w.device)
    y2 = _rows(y, "y", w.out_features, meta, w.device)
    _u_buffer(u, w, meta)
    if resolve_backend(w.device, backend) == "torch":
        _not_static(meta, "lora_expand")
        for rows, part in meta.launch_parts():
            reference.lora_expand(y2[rows], u[rows], w, part)
    else:
        from kernels import triton_lora

        with device_guard(w.device):
            if meta.split is None:
                triton_lora.lora_expand(y2, u, w, meta)
            else:
                for rows, part in meta.split.parts:
                    triton_lora.lora_expand(y2[rows], u[rows], w, part)
    return y


def lora_apply(
    y: Tensor, x: Tensor, weights: LoraPool | LoraWeights, meta: BatchMeta, *, backend: str | None = None
) -> Tensor:
    """LoRA on a mixed batch: `lora_shrink` then `lora_expand`, in place on `y`.

    Semantics:
        y[t] += scale[s] * (x[t] @ A[s].T) @ B[s].T    for s = meta.token_slots[t] >= 0 (rounding as in the two ops)

    Every op runs the metadata's `launch_parts()`: a mixed step's one-token rows (decode tokens) as a
    decode batch, its longer rows as segments, so a decode token's result never depends on its step-mates.
    On the torch backend decode tokens run `kernels.grouped`'s per-token path (batch-invariant) and segments
    its padded batched matmuls unless padding would more than double the work, then the per-segment
    reference; static decode metadata runs `kernels.static_bgmv` (fixed shapes). On Triton both launches
    share one device guard and `u` is not zeroed (the shrink writes every entry the expand reads); decode
    tokens (static included) run BGMV unless the decode policy is "shared" (`kernels.variants`).

    Args:
        y: (T, H_out) base-layer output, updated in place; x: (T, H_in) the layer's input.
    Returns:
        y (the same tensor).
    """
    w = _lora_weights(weights)
    device = w.device
    _check_meta(meta, w.num_slots, device)
    x2 = _rows(x, "x", w.in_features, meta, device)
    y2 = _rows(y, "y", w.out_features, meta, device)
    if resolve_backend(device, backend) == "torch":
        if meta.static:  # a step captured for replay: fixed shapes, no host reads of the slots
            static_bgmv.lora_apply_static(y2, x2, w, meta.token_slots)
            return y
        for rows, part in meta.launch_parts():
            yp, xp = y2[rows], x2[rows]
            if not grouped.lora_apply_grouped(yp, xp, w, part):
                u = torch.zeros(
                    part.num_tokens, w.rank_capacity, dtype=torch.float32, device=device
                )  # (T, R)
                reference.lora_expand(yp, reference.lora_shrink(xp, w, part, u), w, part)
        return y
    from kernels import triton_lora

    # Static metadata takes BGMV here (it reads token_slots alone; grid = T x rank blocks): fixed shapes.
    u = torch.empty(meta.num_tokens, w.rank_capacity, dtype=torch.float32, device=device)  # (T, R)
    with device_guard(device):
        if meta.split is None:  # the common case, without the views (a few µs of host time per call)
            triton_lora.lora_shrink(x2, w, meta, u)
            triton_lora.lora_expand(y2, u, w, meta)
        else:
            for rows, part in meta.split.parts:
                triton_lora.lora_shrink(x2[rows], w, part, u[rows])
                triton_lora.lora_expand(y2[rows], u[rows], w, part)
    return y


# -- IA3 ------------------------------------------------------------------------------------------------


def _ia3(
    t: Tensor, weights: IA3Pool | IA3Weights, meta: BatchMeta, *, inplace: bool, backend: str | None
) -> Tensor:
    w = weights.weights if isinstance(weights, IA3Pool) else weights
    device = w.vectors.device
    _check_meta(meta, w.num_slots, device)
    t2 = _rows(t, "input", w.features, meta, device)
    out = t2 if inplace else torch.empty_like(t2)
    if resolve_backend(device, backend) == "torch":
        reference.ia3_scale(t2, w, meta, out)
    else:
        from kernels import triton_ia3

        with device_guard(device):
            triton_ia3.ia3_scale(t2, w, meta, out)
    return t if inplace else out.view(t.shape)


def ia3_scale_output(
    y: Tensor, weights: IA3Pool | IA3Weights, meta: BatchMeta, *, backend: str | None = None
) -> Tensor:
    """IA3 on the output side (attention / value targets): scale output features, in place.

    Semantics:
        y[t, n] <- round( y[t, n] * l[s][n] )    for s = meta.token_slots[t] >= 0 with a loaded vector
    (float32 product, one cast to y's dtype); every other row is left untouched.

    Args:
        y: (T, F) the base layer's output, F = out_features; weights: `IA3Pool` / `IA3Weights` of F features.
    Returns:
        y (the same tensor).
    """
    return _ia3(y, weights, meta, inplace=True, backend=backend)


def ia3_scale_input(
    x: Tensor, weights: IA3Pool | IA3Weights, meta: BatchMeta, *, backend: str | None = None
) -> Tensor:
    """IA3 on the input side (feed-forward targets): scale the layer's input features, out of place.

    Semantics:
        x'[t, k] = round( x[t, k] * l[s][k] )    for s = meta.token_slots[t] >= 0 with a loaded vector
        x'[t, k] = x[t, k]                      otherwise
    `x` itself is not modified (the residual stream usually still needs it).

    Args:
        x: (T, F) the layer's input, F = in_features; weights: `IA3Pool` / `IA3Weights` of F features.
    Returns:
        x': a new tensor shaped like x.
    """
    return _ia3(x, weights, meta, inplace=False, backend=backend)
