"""Triton IA3 kernel: scale every token's features by its slot's vector, read in place from an `IA3Pool`.

IA3 is elementwise, so one per-token kernel serves prefill and decode alike: a program per (token, feature
block) reads `token_slots`, then the slot's page. Numerics follow `kernels.reference.ia3_scale`: the
product is taken in float32 and rounded once to the output dtype; tokens without a loaded slot are left
alone in place, or copied unchanged when writing to a separate output.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from kernels.ia3_pool import IA3Weights
from kernels.metadata import BatchMeta
from kernels.variants import cdiv, ia3_variant_key


@triton.jit
def _ia3_scale_kernel(
    t_ptr, out_ptr, vec_ptr, slot_page_ptr, token_slots_ptr,
    features, f_blocks,
    stride_tt, stride_tf, stride_ot, stride_of, stride_vp,
    BLOCK_F: tl.constexpr, COPY_UNSCALED: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    tok = (pid // f_blocks).to(tl.int64)
    offs_f = pid % f_blocks * BLOCK_F + tl.arange(0, BLOCK_F)
    mask_f = offs_f < features
    slot = tl.load(token_slots_ptr + tok)
    page = tl.load(slot_page_ptr + tl.maximum(slot, 0))
    active = (slot >= 0) & (page >= 0)
    # In place, rows without an adapter are not touched at all (a constexpr branch, then a runtime one).
    if not COPY_UNSCALED:  # noqa: SIM102
        if (slot < 0) | (page < 0):
            return
    v = tl.load(t_ptr + tok * stride_tt + offs_f * stride_tf, mask=mask_f, other=0.0)  # (BF,)
    vec = tl.load(vec_ptr + tl.where(active, page, 0) * stride_vp + offs_f, mask=mask_f, other=1.0)  # (BF,)
    scale = tl.where(active, vec.to(tl.float32), 1.0)
    result = v.to(tl.float32) * scale
    tl.store(out_ptr + tok * stride_ot + offs_f * stride_of, result.to(out_ptr.dtype.element_ty), mask=mask_f)


def ia3_scale(t: Tensor, w: IA3Weights, meta: BatchMeta, out: Tensor) -> Tensor:
    """out[i] = t[i] * l[slot(i)] (float32 product); `out` may be `t`. t, out: (T, F); returns `out`."""
    if meta.num_tokens == 0:
        return out
    copy = out.data_ptr() != t.data_ptr()
    block_f = ia3_variant_key(w.features, w.vectors.dtype, t.dtype, copy=copy).block_f
    f_blocks = cdiv(w.features, block_f)
    grid = (meta.num_tokens * f_blocks,)
    _ia3_scale_kernel[grid](
        t, out, w.vectors, w.slot_page, meta.token_slots,
        w.features, f_blocks,
        t.stride(0), t.stride(1), out.stride(0), out.stride(1), w.vectors.stride(0),
        BLOCK_F=block_f, COPY_UNSCALED=copy,
    )  # fmt: skip
    return out
