"""The plain-PyTorch ops: the specification, the CPU backend and the oracle of the Triton kernels.

Inputs arrive validated by `kernels.dispatch` (2-D activations, `out` allocated and zeroed); the semantics
are written out in the docstrings of `kernels.dispatch`'s public ops. Numerics, which the Triton kernels
follow operation for operation:

- each product's operands are in the *weights'* dtype (activations are cast to it, as PEFT does), every sum
  is accumulated in float32;
- the shrink result `u` is float32; expand rounds it to the weights' dtype before multiplying (as Punica and
  vLLM do), multiplies the float32 sum by `scale`, adds it to `y` in float32 and rounds once to `y.dtype`.

Batch invariance: a token's result must not depend on its batch-mates (greedy decoding would diverge), but
a BLAS matmul picks its kernel, and so its summation order, by the number of rows (MKL gives a row of an
(n, H) @ (H, r) product different bits for n = 1 and n = 2). So on decode metadata every product is a
batch of one-row matmuls (`_mm` with `rowwise`): each row is its own (1, K) @ (K, N) problem, computed the
same way for any n. Prefill keeps whole-segment matmuls (2-3x faster on long segments).

Work is done per segment on contiguous slices (one gather of the batch's rows up front, one scatter back),
and an adapter whose pages form one run is read as a view, so no weights are copied in float32 pools. The
LoRA ops read the pool's small slot tables on the host (`.tolist()`): free on CPU, a sync on CUDA, where
this path is only the forced fallback and the oracle.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.ia3_pool import IA3Weights
from kernels.metadata import BatchMeta
from kernels.pool import LoraWeights


def _adapter_rows(arena: Tensor, w: LoraWeights, slot: int, rank: int, page_start: list[int]) -> Tensor:
    """Rows of `arena` holding `slot`'s rank units, in rank order: (rank, features)."""
    first = page_start[slot]
    if first >= 0:
        return arena.narrow(0, first, rank)
    return arena.index_select(0, w.page_table[slot, :rank])


def _mm(rows: Tensor, mat: Tensor, rowwise: bool, out: Tensor | None = None) -> Tensor:
    """rows (n, K) @ mat (K, N) -> (n, N); `rowwise`: as n one-row problems (see the module docstring)."""
    if not rowwise:
        return torch.mm(rows, mat, out=out)
    n = rows.shape[0]
    result = torch.bmm(rows.unsqueeze(1), mat.unsqueeze(0).expand(n, -1, -1)).squeeze(
        1
    )  # (n, N), no copy of mat
    return result if out is None else out.copy_(result)


def lora_shrink(x: Tensor, w: LoraWeights, meta: BatchMeta, out: Tensor) -> Tensor:
    """Reference of `kernels.lora_shrink`: out[t, :r] = x[t] @ A[slot].T for tokens with an adapter.

    x: (T, H_in); out: (T, R) float32, zeroed by the caller; returns `out`.
    """
    if meta.num_segments == 0:
        return out
    ranks, page_start = w.ranks.tolist(), w.page_start.tolist()
    order = meta.token_order  # (Ta,)
    xs = x.index_select(0, order).to(w.dtype).float()  # (Ta, H_in), tokens grouped by slot
    us = torch.zeros(order.shape[0], out.shape[1], dtype=torch.float32, device=x.device)  # (Ta, R)
    for slot, start, length in meta.segments():
        r = ranks[slot]
        if r == 0:
            continue
        a = _adapter_rows(w.a_pages, w, slot, r, page_start).float()  # (r, H_in)
        us[start : start + length, :r] = _mm(xs[start : start + length], a.t(), meta.decode)
    out.index_copy_(0, order, us)
    return out


def lora_expand(y: Tensor, u: Tensor, w: LoraWeights, meta: BatchMeta) -> Tensor:
    """Reference of `kernels.lora_expand`: y[t] += scale[slot] * u[t, :r] @ B[slot].T, in place.

    y: (T, H_out); u: (T, R) float32; returns `y`.
    """
    if meta.num_segments == 0:
        return y
    ranks, scales, page_start = w.ranks.tolist(), w.scales.tolist(), w.page_start.tolist()
    order = meta.token_order  # (Ta,)
    us = u.index_select(0, order).to(w.dtype).float()  # (Ta, R), rounded to the weights' dtype
    delta = torch.zeros(order.shape[0], y.shape[1], dtype=torch.float32, device=y.device)  # (Ta, H_out)
    touched = False
    for slot, start, length in meta.segments():
        r = ranks[slot]
        if r == 0:
            continue
        bt = _adapter_rows(w.bt_pages, w, slot, r, page_start).float()  # (r, H_out)
        rows = delta[start : start + length]  # (n, H_out), contiguous
        _mm(us[start : start + length, :r], bt, meta.decode, out=rows).mul_(scales[slot])
        touched = True
    if touched:
        ys = y.index_select(0, order).float() + delta  # (Ta, H_out)
        y.index_copy_(0, order, ys.to(y.dtype))
    return y


def ia3_scale(t: Tensor, w: IA3Weights, meta: BatchMeta, out: Tensor) -> Tensor:
    """Reference of the IA3 ops: out[i] = t[i] * l[slot(i)] where the token has a loaded slot, else t[i].

    t, out: (T, F), `out` may be `t` (in place); returns `out`.
    """
    if meta.num_tokens == 0:
        return out
    slots = meta.token_slots  # (T,)
    page = w.slot_page[slots.clamp(min=0)]  # (T,)
    active = (slots >= 0) & (page >= 0)  # (T,)
    scale = w.vectors[page.clamp(min=0)].float()  # (T, F)
    scaled = torch.where(active[:, None], t.float() * scale, t.float())  # (T, F)
    out.copy_(scaled.to(out.dtype))
    return out
