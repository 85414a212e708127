"""LoRA per token with fixed shapes: the torch backend of static decode metadata (`build_static_decode_meta`).

Every token gathers its own slot's pages up to the pool's largest loaded rank and runs two batched matmuls, so
the shapes depend only on the token count and `max_rank`, never on which slots the tokens carry, and nothing is
read back to the host: the same call can be captured in a CUDA graph and replayed with other slots.

    A:  (T, Rmax, H_in)   pages of token t's slot (slot -1 reads slot 0's, multiplied by 0)
    U = x @ Aᵀ            (T, 1, Rmax) float32, columns >= r[slot] and tokens without a slot zeroed
    y += (U @ Bᵀ) · scale (T, H_out)

Same numerics as `kernels.grouped` (operands in the weights' dtype, float32 sums, u rounded to the weights'
dtype, one rounding of y). The gather costs T · Rmax · (H_in + H_out) values: a decode batch's price for
having no host branch; the Triton BGMV kernels read pages in place instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.pool import LoraWeights


def lora_apply_static(y: Tensor, x: Tensor, w: LoraWeights, token_slots: Tensor) -> Tensor:
    """y[t] += scale[s] · (x[t] @ A[s]ᵀ) @ B[s]ᵀ for s = token_slots[t] >= 0, in place.

    y: (T, H_out), x: (T, H_in), token_slots: (T,) int64 on the weights' device. Returns y.
    """
    r_max = w.max_rank
    if r_max == 0:
        return y
    safe = token_slots.clamp(min=0)  # (T,)
    pages = w.page_table.index_select(0, safe)[:, :r_max]  # (T, Rmax)
    ranks = torch.where(token_slots >= 0, w.ranks.index_select(0, safe), 0)  # (T,)
    keep = torch.arange(r_max, device=y.device)[None, :] < ranks[:, None]  # (T, Rmax)
    mult = keep * w.scales.index_select(0, safe)[:, None]  # (T, Rmax): rank mask · scale
    a = w.a_pages[pages]  # (T, Rmax, H_in)
    bt = w.bt_pages[pages]  # (T, Rmax, H_out)
    xs = x.to(w.dtype)[:, None, :]  # (T, 1, H_in)
    if w.dtype == torch.float32:
        u = torch.bmm(xs, a.transpose(1, 2))
    else:
        u = torch.bmm(xs.float(), a.float().transpose(1, 2))  # (T, 1, Rmax)
    u = u.to(w.dtype).float() * mult[:, None, :]
    if y.dtype == torch.float32 and y.is_contiguous():
        y[:, None, :].baddbmm_(u, bt.float())  # y += u @ Bᵀ in one pass
    else:
        y.copy_(torch.baddbmm(y.float()[:, None, :], u, bt.float())[:, 0].to(y.dtype))
    return y
