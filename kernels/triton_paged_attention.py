"""Triton paged decode attention: one query token per row, keys and values read in place from the KV pool
through the row's block table (no gather copy), split over fixed-size key partitions (flash-decoding).

Taken from the well-kept Triton decode kernels, and what differs:
- SGLang `srt/layers/attention/triton_ops/decode_attention.py` (itself from LightLLM's GQA flash-decoding):
  the two-stage structure (stage 1: a program per (row, KV head, split) runs an online softmax over its keys
  and stores the normalised partial output and its log-sum-exp; stage 2: a program per (row, query head)
  merges the splits), the grouped stage 1 (all query heads of one KV head in one `tl.dot` tile, padded to
  16 rows, so each key/value tile is read once per group), `p.to(v.dtype)` before the second dot, and logit
  softcapping as `cap * tanh(s / cap)` with tanh written through `sigmoid`.
- vLLM `attention/ops/triton_decode_attention.py` (SGLang's kernel with pages): the block-table walk per key,
  `slot = table[row, n // BLOCK_SIZE] * BLOCK_SIZE + n % BLOCK_SIZE`, so any block size works.
- Different on purpose: the split is a fixed number of keys (`PARTITION_KEYS`), not the row's length divided
  by a split count chosen from the batch (SGLang sizes splits per batch, vLLM per row length). A row's keys
  therefore fall into the same partitions, reduced in the same order, whatever its batch-mates: the output is
  bit-identical alone or in any batch. The grid is (rows, KV heads, ceil(nb · bs / PARTITION_KEYS)) and
  (rows, query heads): static shapes only (batch bucket, padded block-table width), so the launch can be
  captured in a CUDA graph; partitions past a row's length (or before its sliding window) exit at once and
  the merge never reads them. The pool layout is Swapyard's (`adapters_core/paged/kv_cache.py`): per layer
  (Hkv, slots, hd), heads outermost.

Masking: key column c of a row of length L is seen when c < L and (with a window w) L - 1 - c < w. Key and
value loads are masked there (masked lanes load 0, never the pool), so a padding column's contents (even NaN)
never reach the output. Numerics: q·k and p·v in the pool's dtype with float32 accumulation (IEEE for float32
pools: no TF32), softmax statistics and partial outputs in float32, one cast to the query's dtype at the end.
Under TRITON_INTERPRET=1 (Triton 3.9) bfloat16 dots run on float32 copies (`kernels.triton_lora._upcast_dot`:
the interpreter's bfloat16 `tl.dot` is wrong; products of bfloat16 values are exact in float32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.paged_attention import attention_variant
from kernels.triton_lora import INTERPRETED
from kernels.variants import cdiv


@triton.jit
def _tanh(x):
    return 2 * tl.sigmoid(2 * x) - 1  # tl has no tanh; SGLang's formulation


# Batch-dependent integers and views (q strides, the block-table and scratch strides, the static buffers'
# offsets) and the pool's head stride (its slot count) are not specialised on: a new batch size must never
# compile a new variant mid-serving, and the warm-up's scratch pool must compile what the real pool launches.
@triton.jit(
    do_not_specialize=["window", "stride_qb", "stride_qh", "stride_kh", "stride_vh", "stride_tb", "stride_mb",
                       "stride_mh", "stride_lb", "stride_lh"],
    do_not_specialize_on_alignment=["q_ptr", "tables_ptr", "lengths_ptr"],
)  # fmt: skip
def _paged_attn_partition_kernel(
    q_ptr, k_ptr, v_ptr, tables_ptr, lengths_ptr, mid_ptr, lse_ptr,
    scale, softcap, window, head_dim,
    stride_qb, stride_qh, stride_kh, stride_ks, stride_vh, stride_vs, stride_tb,
    stride_mb, stride_mh, stride_mp, stride_lb, stride_lh,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    PARTITION: tl.constexpr, BLOCK_SIZE: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1).to(tl.int64)
    part = tl.program_id(2)
    length = tl.load(lengths_ptr + row)
    start = part * PARTITION
    end = tl.minimum(start + PARTITION, length)
    lo = start
    if HAS_WINDOW:
        lo = tl.maximum(start, length - window)
    if lo >= end:  # no key of this row in this partition: the merge does not read it
        return
    offs_g = tl.arange(0, BLOCK_G)
    mask_g = offs_g < GROUP
    heads = kv_head * GROUP + offs_g  # (BG,) the query heads that read this KV head
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    q = tl.load(
        q_ptr + row * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
        mask=mask_g[:, None] & mask_d[None, :],
        other=0.0,
    )  # (BG, BD)
    k_base = k_ptr + kv_head * stride_kh
    v_base = v_ptr + kv_head * stride_vh
    peak = tl.full((BLOCK_G,), float("-inf"), tl.float32)
    total = tl.zeros((BLOCK_G,), tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
    first = start + (lo - start) // BLOCK_N * BLOCK_N  # tiles stay aligned to the partition
    for n0 in range(first, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        seen = (offs_n >= lo) & (offs_n < end)
        block = tl.load(
            tables_ptr + row * stride_tb + offs_n // BLOCK_SIZE, mask=seen, other=0
        )  # (BN,) int64
        slot = block * BLOCK_SIZE + offs_n % BLOCK_SIZE
        k = tl.load(
            k_base + slot[None, :] * stride_ks + offs_d[:, None],
            mask=seen[None, :] & mask_d[:, None],
            other=0.0,
        )  # (BD, BN)
        if UPCAST_DOT:
            s = tl.dot(q.to(tl.float32), k.to(tl.float32), input_precision="ieee")
        else:
            s = tl.dot(q, k, input_precision=DOT_PRECISION)  # (BG, BN) float32
        s = s * scale
        if HAS_SOFTCAP:
            s = softcap * _tanh(s / softcap)
        s = tl.where(seen[None, :], s, float("-inf"))
        v = tl.load(
            v_base + slot[:, None] * stride_vs + offs_d[None, :],
            mask=seen[:, None] & mask_d[None, :],
            other=0.0,
        )  # (BN, BD)
        new_peak = tl.maximum(peak, tl.max(s, 1))  # finite: the first tile holds column lo
        keep = tl.exp(peak - new_peak)
        p = tl.exp(s - new_peak[:, None])
        if UPCAST_DOT:
            pv = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        acc = acc * keep[:, None] + pv
        total = total * keep + tl.sum(p, 1)
        peak = new_peak
    mid = mid_ptr + row * stride_mb + heads[:, None] * stride_mh + part * stride_mp + offs_d[None, :]
    tl.store(mid, acc / total[:, None], mask=mask_g[:, None] & mask_d[None, :])
    tl.store(lse_ptr + row * stride_lb + heads * stride_lh + part, peak + tl.log(total), mask=mask_g)


@triton.jit(
    do_not_specialize=["window", "stride_ob", "stride_oh", "stride_mb", "stride_mh", "stride_lb", "stride_lh"],
    do_not_specialize_on_alignment=["lengths_ptr"],
)  # fmt: skip
def _paged_attn_merge_kernel(
    mid_ptr, lse_ptr, lengths_ptr, out_ptr,
    window, head_dim,
    stride_mb, stride_mh, stride_mp, stride_lb, stride_lh, stride_ob, stride_oh,
    BLOCK_D: tl.constexpr, PARTITION: tl.constexpr, HAS_WINDOW: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    length = tl.load(lengths_ptr + row)
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(length - window, 0)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    peak = float("-inf")
    total = 0.0
    acc = tl.zeros((BLOCK_D,), tl.float32)
    for part in range(lo // PARTITION, tl.cdiv(length, PARTITION)):  # exactly the partitions stage 1 wrote
        o = tl.load(
            mid_ptr + row * stride_mb + head * stride_mh + part * stride_mp + offs_d, mask=mask_d, other=0.0
        )
        lse = tl.load(lse_ptr + row * stride_lb + head * stride_lh + part)
        new_peak = tl.maximum(peak, lse)
        keep = tl.exp(peak - new_peak)
        w = tl.exp(lse - new_peak)
        acc = acc * keep + w * o
        total = total * keep + w
        peak = new_peak
    tl.store(out_ptr + row * stride_ob + head * stride_oh + offs_d, acc / total, mask=mask_d)


def decode_attention(
    q: Tensor,
    k_pool: Tensor,
    v_pool: Tensor,
    block_tables: Tensor,
    lengths: Tensor,
    out: Tensor,
    *,
    block_size: int,
    scale: float,
    window: int | None,
    softcap: float | None,
    partition: int,
) -> Tensor:
    """Launch the two stages; arguments as `kernels.paged_attention.decode_attention` (validated there)."""
    rows, hq, hd = q.shape
    hkv = k_pool.shape[0]
    v = attention_variant(
        hq, hkv, hd, k_pool.dtype, block_size, window is not None, softcap is not None, partition
    )
    parts = cdiv(block_tables.shape[1] * block_size, v.partition)
    mid = torch.empty(rows, hq, parts, hd, dtype=torch.float32, device=q.device)  # (B, Hq, P, hd)
    lse = torch.empty(rows, hq, parts, dtype=torch.float32, device=q.device)  # (B, Hq, P)
    precision = "ieee" if k_pool.dtype == torch.float32 else "tf32"  # tf32 only matters for float32 operands
    _paged_attn_partition_kernel[(rows, hkv, parts)](
        q, k_pool, v_pool, block_tables, lengths, mid, lse,
        scale, softcap or 1.0, window or 0, hd,
        q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1), v_pool.stride(0), v_pool.stride(1),
        block_tables.stride(0),
        mid.stride(0), mid.stride(1), mid.stride(2), lse.stride(0), lse.stride(1),
        GROUP=hq // hkv, BLOCK_G=v.block_g, BLOCK_D=v.block_d, BLOCK_N=v.block_n, PARTITION=v.partition,
        BLOCK_SIZE=block_size, HAS_WINDOW=v.window, HAS_SOFTCAP=v.softcap, DOT_PRECISION=precision,
        UPCAST_DOT=INTERPRETED and k_pool.dtype == torch.bfloat16,
    )  # fmt: skip
    _paged_attn_merge_kernel[(rows, hq)](
        mid, lse, lengths, out,
        window or 0, hd,
        mid.stride(0), mid.stride(1), mid.stride(2), lse.stride(0), lse.stride(1), out.stride(0), out.stride(1),
        BLOCK_D=v.block_d, PARTITION=v.partition, HAS_WINDOW=v.window,
    )  # fmt: skip
    return out
