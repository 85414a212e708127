"""The paged KV pool: per attention layer, keys and values of every cached stream position, preallocated once.

Layer l holds `keys[l]`, `values[l]`, each (Hkv_l, num_blocks · block_size, hd_l): slot `b · block_size + o` is
offset o of block b. Heads outermost so that a gather of a row's blocks is (Hkv, C, hd) with contiguous
(C, hd) rows per head, the layout SDPA runs fastest on (about 30% faster on CPU than slots outermost). A row's stream position p lives in slot `block_table[p // block_size] · block_size +
p % block_size` (plan.py). Block 0 is the scratch block (`RESERVED_BLOCKS`): never handed out, never written;
gathers point every padding entry of a block table there, so no read ever touches another row's block.
Attention gathers whole blocks (a row's last block past its length is masked); a block is zeroed when a row
writes its first position, so what an earlier owner left there (even a NaN) can never reach a masked column.

`StepCache` is what the model gets as its `cache` for one paged step: its `update` writes the step's keys and
values into their slots in place (`index_copy_`, never a copy of the pool) and remembers the layer, which the
paged attention (attention.py) then reads over each row's own blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .batch import PagedBatch

RESERVED_BLOCKS = 1  # block 0: the scratch block every padding index reads


class KVPool:
    """Preallocated keys and values per layer; `heads[l]` = (key/value heads, head width) of layer l."""

    def __init__(
        self,
        heads: list[tuple[int, int]],
        num_blocks: int,
        block_size: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        if block_size < 1 or num_blocks <= RESERVED_BLOCKS:
            raise ValueError(
                f"init_kv_cache needs block_size >= 1 and more than {RESERVED_BLOCKS} block(s) (block 0 is the "
                f"scratch block); got num_blocks={num_blocks}, block_size={block_size}."
            )
        self.heads, self.num_blocks, self.block_size = heads, num_blocks, block_size
        slots = num_blocks * block_size
        self.keys = [torch.zeros(h, slots, d, dtype=dtype, device=device) for h, d in heads]
        self.values = [torch.zeros(h, slots, d, dtype=dtype, device=device) for h, d in heads]

    def copy_block(self, src: int, dst: int) -> None:
        """Block `dst` gets block `src`'s keys and values, every layer (a forked row's partial last block)."""
        bs = self.block_size
        for cache in (*self.keys, *self.values):  # (h, slots, d) each
            cache[:, dst * bs : (dst + 1) * bs] = cache[:, src * bs : (src + 1) * bs]

    @staticmethod
    def block_bytes(heads: list[tuple[int, int]], block_size: int, dtype: torch.dtype) -> int:
        """Bytes of one block over all layers, keys and values."""
        width = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else torch.iinfo(dtype).bits // 8
        return 2 * block_size * width * sum(h * d for h, d in heads)


class StepCache:
    """The `cache` of one paged forward (duck-typed: transformers' models call `update` and, for positions they
    are not given, `get_seq_length`; the step always passes position ids)."""

    def __init__(self, pool: KVPool, batch: PagedBatch) -> None:
        self.pool, self.batch = pool, batch
        self.layer: int | None = None  # the layer whose keys were written last: the one attending now
        self.writes = 0  # layers written and attended in this step (paged_support's probe checks them)
        self.attended = 0

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys/values (1, Hkv, T, hd) into their slots; return them unchanged."""
        if key_states.shape[0] != 1 or key_states.shape[2] != self.batch.num_tokens:
            raise RuntimeError(
                f"paged step: layer {layer_idx} produced keys {tuple(key_states.shape)} for a packed stream of "
                f"{self.batch.num_tokens} tokens; this model does not run on the paged path."
            )
        slots = self.batch.write_slots
        if self.batch.fresh_blocks.numel():  # a row starts these blocks: clear what an earlier owner left
            for pool in (self.pool.keys[layer_idx], self.pool.values[layer_idx]):
                heads, _, width = pool.shape
                blocks = pool.view(heads, self.pool.num_blocks, self.pool.block_size, width)
                blocks.index_fill_(1, self.batch.fresh_blocks, 0.0)
        self.pool.keys[layer_idx].index_copy_(1, slots, key_states[0])  # (Hkv, T, hd) into (Hkv, slots, hd)
        self.pool.values[layer_idx].index_copy_(1, slots, value_states[0])
        self.layer = layer_idx
        self.writes += 1
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        """(key length, offset) as a cache without past reports it (BLOOM sizes its unused ALiBi tensor so)."""
        return query_length, 0
