"""Decode attention over a paged KV pool: the op, which backend runs it, and its compiled variants.

The Triton kernel (`kernels.triton_paged_attention`) reads each row's keys and values in place through its
block table; the torch path is the caller's own (adapters_core/paged/attention.py: gather the blocks, SDPA),
which this package does not import. So the op here is Triton-only and the caller asks `takes_triton` first:

    if paged_attention.takes_triton(q, k_pool, unsupported=has_prefix or has_alibi):
        out = paged_attention.decode_attention(q, k_pool, v_pool, tables, lengths, block_size=bs, scale=s)
    else:
        ...  # gather + SDPA

Backend: `SWAPYARD_ATTENTION` (auto | triton | torch) when set, else the kernels' choice (`SWAPYARD_KERNELS`,
kernels/dispatch.py `resolve_backend`): Triton on CUDA tensors when Triton is installed, torch elsewhere;
forcing triton on CPU tensors needs TRITON_INTERPRET=1 (tests) and is an error otherwise. A call the kernel
does not support (terms it does not apply, such as prefix-tuning keys or ALiBi biases; mixed dtypes; head
widths over 256) takes the torch path whatever the backend: never a wrong answer.

Variants (what Triton compiles, `AttentionVariant`): a function of the layer's geometry (query / KV heads,
head width, pool dtype, block size) and whether it has a sliding window and softcapping; never of the batch.
`kernels.warmup.warmup_attention` launches each once at start-up. This module imports no Triton.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import torch
from torch import Tensor

from kernels.dispatch import Backend, device_guard, resolve_backend
from kernels.errors import ShapeError
from kernels.variants import pow2_clamp

ENV_VAR = "SWAPYARD_ATTENTION"
PARTITION_KEYS = 256  # keys per split: fixed, so a row's partitions (and its bits) never depend on the batch
BLOCK_N = 32  # keys per tile inside a partition (SGLang's grouped decode uses 32)
MAX_HEAD_DIM = 256
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class AttentionVariant(NamedTuple):
    """One compiled variant of the two kernels (with the geometry Triton specialises on)."""

    q_heads: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype  # the pool's (and the query's)
    block_size: int
    window: bool  # a sliding-window layer
    softcap: bool  # logit softcapping
    block_g: int  # query heads per program, padded to a `tl.dot` tile (>= 16)
    block_d: int  # head width, padded to a power of two (>= 16)
    block_n: int  # keys per tile: BLOCK_N, or the partition when smaller
    partition: int  # keys per split


@functools.lru_cache(maxsize=256)
def attention_variant(
    q_heads: int,
    kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    block_size: int,
    window: bool,
    softcap: bool,
    partition: int = PARTITION_KEYS,
) -> AttentionVariant:
    """The variant a layer of this geometry launches (`partition` other than PARTITION_KEYS: tests only)."""
    if partition < 16 or partition & (partition - 1):
        raise ShapeError(f"partition must be a power of two >= 16 keys, got {partition}")
    return AttentionVariant(
        q_heads,
        kv_heads,
        head_dim,
        dtype,
        block_size,
        window,
        softcap,
        block_g=pow2_clamp(q_heads // kv_heads, 16, 1 << 30),
        block_d=pow2_clamp(head_dim, 16, MAX_HEAD_DIM),
        block_n=min(BLOCK_N, partition),
        partition=partition,
    )


def attention_backend(device: torch.device) -> Backend:
    """The backend decode attention on `device` runs with (module docstring)."""
    return resolve_backend(device, os.environ.get(ENV_VAR) or None)


def takes_triton(q: Tensor, k_pool: Tensor, *, unsupported: bool = False) -> bool:
    """Whether decode attention of `q` (..., Hq, hd) over `k_pool` (Hkv, slots, hd) runs the Triton kernel: the
    backend is Triton and the kernel computes this call exactly as the torch path would. `unsupported`: the
    caller has terms the kernel does not apply (prefix-tuning keys, ALiBi biases): then never."""
    if unsupported or q.dtype != k_pool.dtype or q.dtype not in DTYPES:
        return False
    if q.shape[-1] != k_pool.shape[-1] or q.shape[-1] > MAX_HEAD_DIM or q.shape[-2] % k_pool.shape[0]:
        return False
    return attention_backend(q.device) == "triton"


def decode_attention(
    q: Tensor,
    k_pool: Tensor,
    v_pool: Tensor,
    block_tables: Tensor,
    lengths: Tensor,
    *,
    block_size: int,
    scale: float,
    window: int | None = None,
    softcap: float | None = None,
    out: Tensor | None = None,
    partition: int | None = None,
) -> Tensor:
    """Decode attention of one query token per row over its blocks of the pool (Triton; see `takes_triton`).

    Semantics (G = Hq / Hkv query heads share KV head h // G; row b of length L = lengths[b]):
        slot(c)   = block_tables[b, c // block_size] * block_size + c % block_size
        s[c]      = scale * q[b, h] . k_pool[h // G, slot(c)]      (softcap: softcap * tanh(s[c] / softcap))
        out[b, h] = sum_c softmax(s)[c] * v_pool[h // G, slot(c)]  over c < L with L - 1 - c < window (if any)
    in float32 (products in the pool's dtype), cast once to q's dtype. Only the visible columns are read.

    Args:
        q: (B, Hq, hd), the pool's dtype; any strides with a contiguous last dimension.
        k_pool, v_pool: (Hkv, num_blocks * block_size, hd), one layer of `KVPool`.
        block_tables: (B, nb) int64, covering each row's length (padding entries: any valid block, e.g. 0).
        lengths: (B,) int64, 1 <= lengths[b] <= nb * block_size (not checked: that would read the device).
        out: optional (B, Hq, hd) buffer of q's dtype (contiguous last dimension).
        partition: keys per split (a power of two >= 16), for tests only; default `PARTITION_KEYS`.
    Returns:
        out: (B, Hq, hd).
    """
    _check(q, k_pool, v_pool, block_tables, lengths, block_size)
    if q.stride(-1) != 1:
        q = q.contiguous()
    if block_tables.stride(1) != 1:
        block_tables = block_tables.contiguous()
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    elif out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ShapeError(
            f"out must be {q.dtype} {tuple(q.shape)} with contiguous rows, got {out.dtype} {out.shape}"
        )
    if window is not None and window < 1:
        raise ShapeError(f"window must be >= 1 or None, got {window}")
    from kernels import triton_paged_attention

    with device_guard(q.device):
        return triton_paged_attention.decode_attention(
            q,
            k_pool,
            v_pool,
            block_tables,
            lengths,
            out,
            block_size=block_size,
            scale=scale,
            window=window,
            softcap=softcap,
            partition=partition or PARTITION_KEYS,  # read at the call: tests may set it
        )


def _check(q: Tensor, k: Tensor, v: Tensor, tables: Tensor, lengths: Tensor, block_size: int) -> None:
    if q.dim() != 3 or k.dim() != 3 or k.shape != v.shape:
        raise ShapeError(
            f"q must be (B, Hq, hd) and k_pool, v_pool both (Hkv, slots, hd); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    rows, hq, hd = q.shape
    if k.shape[2] != hd or hq % k.shape[0] or k.shape[1] % block_size:
        raise ShapeError(
            f"q {tuple(q.shape)} and pool {tuple(k.shape)}: head widths must match, Hq must be a multiple of "
            f"Hkv, and the pool's slots a multiple of block_size={block_size}"
        )
    if q.dtype != k.dtype or v.dtype != k.dtype or q.dtype not in DTYPES:
        raise ShapeError(f"q and the pools must share one of {DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.stride(2) != 1 or v.stride(2) != 1:
        raise ShapeError("k_pool and v_pool need contiguous head rows (stride 1 over hd)")
    if tables.dim() != 2 or tables.shape[0] != rows or tables.dtype != torch.long:
        raise ShapeError(f"block_tables must be int64 ({rows}, nb), got {tables.dtype} {tuple(tables.shape)}")
    if lengths.shape != (rows,) or lengths.dtype != torch.long:
        raise ShapeError(f"lengths must be int64 ({rows},), got {lengths.dtype} {tuple(lengths.shape)}")
    devices = {t.device for t in (q, k, v, tables, lengths)}
    if len(devices) != 1:
        raise ShapeError(f"q, the pools, block_tables and lengths must be on one device, got {devices}")
