"""The Triton paged decode attention (kernels/triton_paged_attention.py, TRITON_INTERPRET=1 on CPU) against the
torch path it replaces (adapters_core/paged/attention.py: gather the blocks, SDPA): shuffled block tables,
mixed lengths (1, exactly a block, exactly a partition, several partitions), GQA and MHA, sliding windows,
softcapping, float32 and bfloat16; a row's output bit-identical alone and among random batch-mates; nothing
past a row's visible columns ever read (NaN-poisoned pools); calls the kernel does not support refused.

Shapes are small (the interpreter runs every program in Python); partitions of 32 keys (`partition=`) so that
rows of up to ~90 keys cross several partitions and exercise the merge kernel. On CUDA (gpu marker, compiled
kernels): the same at Llama-3-8B attention geometry and serving sizes, and no compile after the warm-up.
"""

from __future__ import annotations

import pytest
import torch

from adapters_core.paged import attention
from kernels import paged_attention as pk
from kernels import triton_lora
from kernels.errors import ShapeError

interpreted = pytest.mark.skipif(
    not triton_lora.INTERPRETED, reason="CPU Triton tests need TRITON_INTERPRET=1"
)
compiled = pytest.mark.skipif(
    not torch.cuda.is_available() or triton_lora.INTERPRETED, reason="needs CUDA and compiled kernels"
)

BS = 4  # positions per block
NUM_BLOCKS = 200
PART = 32  # keys per partition in these tests (serving: PARTITION_KEYS)
# One key; exactly a block; a block and one; exactly a partition; one more; three partitions; a middling one.
LENGTHS = [1, 4, 5, 32, 33, 90, 17]


class Pool:
    """One layer of a KV pool (Hkv, NUM_BLOCKS * BS, hd) and rows with blocks taken from a shuffled free list."""

    def __init__(self, hq: int, hkv: int, hd: int, dtype: torch.dtype, seed: int = 0) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.hq, self.hkv, self.hd, self.dtype = hq, hkv, hd, dtype
        self.k = torch.randn(hkv, NUM_BLOCKS * BS, hd, generator=self.gen).to(dtype)
        self.v = torch.randn(hkv, NUM_BLOCKS * BS, hd, generator=self.gen).to(dtype)
        self.free = (torch.randperm(NUM_BLOCKS - 1, generator=self.gen) + 1).tolist()  # block 0: scratch

    def row(self, length: int) -> list[int]:
        return [self.free.pop() for _ in range(-(-length // BS))]

    def query(self, rows: int) -> torch.Tensor:
        return torch.randn(rows, self.hq, self.hd, generator=self.gen).to(self.dtype)  # (B, Hq, hd)


def tables_of(rows: list[list[int]], width: int | None = None) -> torch.Tensor:
    """(B, nb) block tables padded with the scratch block 0 (as batch.py and the static buffers pad them)."""
    nb = width or max(len(r) for r in rows)
    out = torch.zeros(len(rows), nb, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def torch_path(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    tables: torch.Tensor,
    lengths: list[int],
    scale: float,
    window: int | None,
    softcap: float | None,
    bs: int = BS,
) -> torch.Tensor:
    """The oracle: each row's whole stream gathered, masked to its length (and window), one SDPA. (B, Hq, hd)."""
    width = max(lengths)
    length = torch.tensor(lengths, device=tables.device)[:, None]  # (B, 1)
    cols = torch.arange(width, device=tables.device)[None]  # (1, C)
    visible = cols < length
    if window is not None:  # the query sits at position length - 1
        visible &= length - 1 - cols < window
    k = attention._gather(k_pool, tables, bs)[:, :, :width]
    v = attention._gather(v_pool, tables, bs)[:, :, :width]
    return attention._attend(q[:, :, None], k, v, visible[:, None, None], scale, softcap)[:, :, 0]


def kernel(
    pool: Pool,
    q: torch.Tensor,
    tables: torch.Tensor,
    lengths: list[int],
    scale: float,
    window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    return pk.decode_attention(
        q,
        pool.k,
        pool.v,
        tables,
        torch.tensor(lengths),
        block_size=BS,
        scale=scale,
        window=window,
        softcap=softcap,
        partition=PART,
    )


@interpreted
@pytest.mark.parametrize("softcap", [None, 2.5], ids=["nocap", "softcap"])
@pytest.mark.parametrize("window", [None, 6], ids=["full", "window"])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2)], ids=["mha", "gqa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_kernel_equals_gather_sdpa(
    dtype: torch.dtype, heads: tuple[int, int], window: int | None, softcap: float | None
) -> None:
    hq, hkv = heads
    pool = Pool(hq, hkv, 16, dtype)
    rows = [pool.row(n) for n in LENGTHS]
    tables = tables_of(rows)
    q = pool.query(len(rows))
    scale = 16**-0.5
    got = kernel(pool, q, tables, LENGTHS, scale, window, softcap)
    assert got.dtype == dtype and got.shape == q.shape
    if dtype == torch.float32:
        want = torch_path(q, pool.k, pool.v, tables, LENGTHS, scale, window, softcap)
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
        return
    # bfloat16: both paths round; each must be near the float32 answer on the same bfloat16 inputs, the kernel
    # no further from it than the torch path plus one bfloat16 rounding of the output (2**-8 relative).
    exact = torch_path(q.float(), pool.k.float(), pool.v.float(), tables, LENGTHS, scale, window, softcap)
    ours = (got.float() - exact).abs().max().item()
    theirs = (
        (torch_path(q, pool.k, pool.v, tables, LENGTHS, scale, window, softcap).float() - exact).abs().max()
    )
    assert ours <= theirs.item() + 2**-8 * exact.abs().max().item(), (ours, theirs)
    torch.testing.assert_close(got.float(), exact, atol=2e-2, rtol=2e-2)


@interpreted
def test_serving_partition_and_a_wide_head() -> None:
    """The serving defaults (PARTITION_KEYS, BLOCK_N) and a head width that is not a power of two (24)."""
    pool = Pool(6, 3, 24, torch.float32, seed=3)
    lengths = [3, 70, 41]
    rows = [pool.row(n) for n in lengths]
    tables = tables_of(rows)
    q = pool.query(3)
    got = pk.decode_attention(q, pool.k, pool.v, tables, torch.tensor(lengths), block_size=BS, scale=0.3)
    want = torch_path(q, pool.k, pool.v, tables, lengths, 0.3, None, None)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_row_is_bit_identical_alone_and_among_batch_mates(dtype: torch.dtype) -> None:
    """A row of 45 keys (two partitions), alone and at a random place among 1, 2 and 6 random rows (lengths up
    to 90, so the grid and the padded table width change): the same bits. Its table is also padded wider."""
    pool = Pool(8, 2, 16, dtype, seed=1)
    gen = torch.Generator().manual_seed(7)
    mine = pool.row(45)
    q0 = pool.query(1)
    alone = kernel(pool, q0, tables_of([mine]), [45], 0.25, 9, 2.0)[0]
    padded = kernel(pool, q0, tables_of([mine], width=23), [45], 0.25, 9, 2.0)[0]
    assert torch.equal(padded, alone)
    for n in (2, 3, 7):
        pool.free = (torch.randperm(NUM_BLOCKS - 1, generator=gen) + 1).tolist()
        pool.free = [b for b in pool.free if b not in mine]
        at = int(torch.randint(0, n, (1,), generator=gen))
        lengths = torch.randint(1, 91, (n,), generator=gen).tolist()
        lengths[at] = 45
        rows = [mine if i == at else pool.row(length) for i, length in enumerate(lengths)]
        q = pool.query(n)
        q[at] = q0[0]
        got = kernel(pool, q, tables_of(rows), lengths, 0.25, 9, 2.0)[at]
        assert torch.equal(got, alone), f"the row differs among {n} rows"


@interpreted
@pytest.mark.parametrize("window", [None, 5], ids=["full", "window"])
def test_nothing_past_a_rows_visible_keys_is_read(window: int | None) -> None:
    """Every slot a row does not see (free blocks, the scratch block, the tail of its last block, columns
    before its window) holds NaN: the outputs are finite and bit-identical to those over a clean pool. A
    padding row (length 1 over the scratch block, as the static step pads) reads only slot 0."""
    pool = Pool(4, 2, 16, torch.float32, seed=2)
    lengths = [1, 4, 7, 38, 1]
    rows = [pool.row(n) for n in lengths[:-1]] + [[0]]
    tables = tables_of(rows, width=12)
    q = pool.query(len(rows))
    clean = kernel(pool, q, tables, lengths, 0.25, window, None)
    seen = torch.zeros(NUM_BLOCKS * BS, dtype=torch.bool)
    for r, n in zip(rows, lengths):
        for c in range(n):
            if window is None or n - 1 - c < window:
                seen[r[c // BS] * BS + c % BS] = True
    pool.k[:, ~seen] = float("nan")
    pool.v[:, ~seen] = float("nan")
    got = kernel(pool, q, tables, lengths, 0.25, window, None)
    assert torch.isfinite(got).all()
    assert torch.equal(got, clean)


@interpreted
def test_static_shapes_make_the_grid() -> None:
    """The launch grid comes from (rows, padded table width) only: a table padded wider changes nothing but
    the number of (empty) partitions; per-row lengths are read on the device."""
    pool = Pool(4, 2, 16, torch.float32, seed=4)
    lengths = [9, 2]
    rows = [pool.row(n) for n in lengths]
    q = pool.query(2)
    narrow = kernel(pool, q, tables_of(rows), lengths, 0.5, None, None)
    wide = kernel(pool, q, tables_of(rows, width=40), lengths, 0.5, None, None)  # 160 keys: 5 partitions
    assert torch.equal(narrow, wide)


@interpreted
def test_unsupported_calls_take_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = Pool(4, 2, 16, torch.float32)
    q = pool.query(2)
    monkeypatch.setenv(pk.ENV_VAR, "triton")
    assert pk.takes_triton(q, pool.k)
    assert not pk.takes_triton(q, pool.k, unsupported=True)  # prefix keys, ALiBi
    assert not pk.takes_triton(q.double(), pool.k.double())
    assert not pk.takes_triton(q.half(), pool.k)  # mixed dtypes
    wide = torch.zeros(2, 4, 320)
    assert not pk.takes_triton(wide, torch.zeros(2, 8, 320))  # head width over MAX_HEAD_DIM
    assert not pk.takes_triton(pool.query(2)[:, :3], pool.k)  # 3 query heads over 2 KV heads
    monkeypatch.setenv(pk.ENV_VAR, "torch")
    assert not pk.takes_triton(q, pool.k)
    monkeypatch.delenv(pk.ENV_VAR)
    monkeypatch.setenv("SWAPYARD_KERNELS", "triton")  # the kernels' choice when SWAPYARD_ATTENTION is unset
    assert pk.takes_triton(q, pool.k)
    monkeypatch.delenv("SWAPYARD_KERNELS")
    assert not pk.takes_triton(q, pool.k)  # auto on CPU tensors: torch


@interpreted
def test_bad_arguments_name_the_problem() -> None:
    pool = Pool(4, 2, 16, torch.float32)
    q = pool.query(2)
    tables = torch.zeros(2, 3, dtype=torch.long)
    lengths = torch.tensor([1, 2])
    with pytest.raises(ShapeError, match="int64"):
        pk.decode_attention(q, pool.k, pool.v, tables.int(), lengths, block_size=BS, scale=1.0)
    with pytest.raises(ShapeError, match="share one of"):
        pk.decode_attention(q.half(), pool.k, pool.v, tables, lengths, block_size=BS, scale=1.0)
    with pytest.raises(ShapeError, match="multiple of Hkv"):
        pk.decode_attention(q[:, :3], pool.k, pool.v, tables, lengths, block_size=BS, scale=1.0)
    with pytest.raises(ShapeError, match="window"):
        pk.decode_attention(q, pool.k, pool.v, tables, lengths, block_size=BS, scale=1.0, window=0)


@interpreted
def test_warmup_launches_every_variant() -> None:
    from kernels.warmup import warmup_attention

    variants = {
        pk.attention_variant(8, 2, 16, dtype, BS, window, softcap)
        for dtype in (torch.float32, torch.bfloat16)
        for window in (False, True)
        for softcap in (False, True)
    }
    assert warmup_attention(variants, device="cpu") == variants


# -- CUDA, compiled ---------------------------------------------------------------------------------------

GEOMETRY = (32, 8, 128, 16)  # Llama-3-8B: query heads, KV heads, head width; blocks of 16


def cuda_case(rows: int, longest: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    """(q, k_pool, v_pool, tables, lengths) of `rows` rows of 1..longest keys in shuffled blocks, on CUDA."""
    hq, hkv, hd, bs = GEOMETRY
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, longest + 1, (rows,), generator=gen)
    lengths[0] = longest
    nb = -(-longest // bs)
    blocks = 1 + rows * nb
    tables = (torch.randperm(blocks - 1, generator=gen) + 1).view(rows, nb)
    tables[torch.arange(nb)[None] * bs >= lengths[:, None]] = 0  # padding entries: the scratch block
    on_device = torch.Generator(device="cuda").manual_seed(seed)  # pools of up to 1 GB: drawn on the device
    k = torch.randn(hkv, blocks * bs, hd, generator=on_device, device="cuda").to(dtype)
    v = torch.randn(hkv, blocks * bs, hd, generator=on_device, device="cuda").to(dtype)
    q = torch.randn(rows, hq, hd, generator=on_device, device="cuda").to(dtype)
    return q, k, v, tables.cuda(), lengths.cuda()


def bf16_error_check(got: torch.Tensor, exact: torch.Tensor, theirs: torch.Tensor) -> None:
    """bfloat16 (as test_kernel_equals_gather_sdpa): near the float32 answer `exact` on the same inputs, and no
    further from it than the torch path's bfloat16 answer `theirs` plus one bfloat16 rounding of the output."""
    ours = (got.float() - exact).abs().max().item()
    bound = (theirs.float() - exact).abs().max().item() + 2**-8 * exact.abs().max().item()
    assert ours <= bound, (ours, bound)
    torch.testing.assert_close(got.float(), exact, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@compiled
@pytest.mark.parametrize("features", [(None, None), (512, 30.0)], ids=["full", "window_softcap"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows", [1, 64])
def test_cuda_serving_shapes_equal_gather_sdpa(
    rows: int, dtype: torch.dtype, features: tuple[int | None, float | None]
) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    window, softcap = features
    bs, scale = GEOMETRY[3], 128**-0.5
    q, k, v, tables, lengths = cuda_case(rows, 2048, dtype, seed=rows)
    got = pk.decode_attention(
        q, k, v, tables, lengths, block_size=bs, scale=scale, window=window, softcap=softcap
    )
    per_row = lengths.tolist()
    want = torch_path(q, k, v, tables, per_row, scale, window, softcap, bs)
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    else:
        exact = torch_path(q.float(), k.float(), v.float(), tables, per_row, scale, window, softcap, bs)
        bf16_error_check(got, exact, want)


@pytest.mark.gpu
@compiled
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_row_is_batch_invariant(dtype: torch.dtype) -> None:
    """A row of 1,500 keys alone, then at a random place among 1..255 random rows (up to 2,048 keys): same bits."""
    bs = GEOMETRY[3]
    q0, k, v, tables0, _ = cuda_case(1, 1500, dtype, seed=0)
    gen = torch.Generator().manual_seed(5)
    lengths0 = torch.tensor([1500], device="cuda")
    alone = pk.decode_attention(q0, k, v, tables0, lengths0, block_size=bs, scale=0.1)[0]
    for n in (2, 3, 7, 64, 256):
        _, km, vm, tables, lengths = cuda_case(n, 2048, dtype, seed=n)
        pool_k, pool_v = (
            torch.cat([k, km], 1),
            torch.cat([v, vm], 1),
        )  # the row's blocks first, then the mates'
        offset = k.shape[1] // bs
        tables = torch.where(tables > 0, tables + offset, tables)
        q = torch.randn(n, *q0.shape[1:], generator=gen).to("cuda", dtype)  # the mates' queries
        at = int(torch.randint(0, n, (1,), generator=gen))
        q[at], lengths[at] = q0[0], 1500
        tables[at] = 0
        tables[at, : tables0.shape[1]] = tables0[0]
        got = pk.decode_attention(q, pool_k, pool_v, tables, lengths, block_size=bs, scale=0.1)[at]
        assert torch.equal(got, alone), f"the row differs among {n} rows"


@pytest.mark.gpu
@compiled
def test_cuda_no_compile_after_warmup() -> None:
    """Warm the variants of two layer kinds (full; sliding window + softcap); then batches of other sizes, table
    widths and buffer offsets (as the static step's views) compile nothing."""
    from kernels import triton_paged_attention as tpa
    from kernels.warmup import warmup_attention

    hq, hkv, hd, bs = GEOMETRY
    variants = {pk.attention_variant(hq, hkv, hd, torch.bfloat16, bs, w, w) for w in (False, True)}
    warmup_attention(variants, device="cuda")
    kernels_ = [tpa._paged_attn_partition_kernel, tpa._paged_attn_merge_kernel]
    before = [sum(len(c[0]) for c in kern.device_caches.values()) for kern in kernels_]
    for n, longest in ((1, 5), (3, 100), (17, 700), (64, 2048), (256, 300)):
        q, k, v, tables, lengths = cuda_case(n, longest, torch.bfloat16, seed=n)
        packed = torch.zeros(1 + n + tables.numel(), dtype=torch.long, device="cuda")  # odd offsets
        packed[1 : 1 + n] = lengths
        packed[1 + n :] = tables.flatten()
        views = packed[1 : 1 + n], packed[1 + n :].view_as(tables)
        for window, softcap in ((None, None), (256, 50.0)):
            pk.decode_attention(
                q, k, v, tables, lengths, block_size=bs, scale=0.1, window=window, softcap=softcap
            )
            pk.decode_attention(
                q, k, v, views[1], views[0], block_size=bs, scale=0.1, window=window, softcap=softcap
            )
    torch.cuda.synchronize()
    assert [sum(len(c[0]) for c in kern.device_caches.values()) for kern in kernels_] == before
