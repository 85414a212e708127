"""Block bookkeeping of the paged KV cache: which physical blocks are free, which rows hold them, and the prefix
cache of full blocks that rows of the same adapter version may share. Pure Python: no tensors live here.

The KV pool (core's, adapters_core/paged/) holds `num_blocks` blocks of `block_size` stream positions each. A row
(`seq_id`) owns a block table: stream position p lives in block `table[p // block_size]` at offset
`p % block_size`. `BlockPool` hands blocks out and counts references; `KVBlocks` keeps the per-row tables and
the prefix cache's hash chains on top of it.

Prefix cache. A full block whose keys and values have been computed is registered under a hash chain:

    hash(block i) = sha256(hash(block i-1), adapter content hash, tokens of block i)

so a block is reused only by a row whose stream has exactly the same tokens up to and including that block,
under exactly the same adapter version. A re-uploaded adapter has a new content hash, so it can never read the
old version's keys and values. Virtual (prompt-tuning) positions are hashed as their VIRTUAL placeholder: their
values come from the adapter, which the content hash already names. A cached block whose last row left keeps
its contents and stays reusable; it is evicted (least recently released first) only when the free list runs dry.

Worked example (block_size 4, 6 blocks, reserved 1: blocks 1..5 can be handed out):

    blocks = KVBlocks(BlockPool(6, 4, reserved=1))
    blocks.admit(7, "h", [5, 6, 7, 8, 9, 10], positions=6)   # -> 0 cached positions; table of 7 = [1, 2]
    blocks.commit(7, "h", [5, 6, 7, 8, 9, 10], computed=6)   # block 1 (tokens 5 6 7 8) is now cached
    blocks.admit(8, "h", [5, 6, 7, 8, 11], positions=5)      # -> 4: block 1 is shared, table of 8 = [1, 3]
    blocks.admit(9, "other", [5, 6, 7, 8, 11], positions=5)  # -> 0: another adapter version never shares
"""

from __future__ import annotations

import collections
import hashlib
from array import array
from collections.abc import Sequence

BlockHash = bytes
ROOT_HASH: BlockHash = b"\0" * 32  # the parent of a stream's first block


def block_hash(parent: BlockHash, adapter_key: str, tokens: Sequence[int]) -> BlockHash:
    """The prefix-cache key of a full block: its parent's key, the adapter version and its tokens."""
    h = hashlib.sha256(parent)
    key = adapter_key.encode()
    h.update(len(key).to_bytes(4, "little") + key)  # length-prefixed: no two (key, tokens) pairs collide
    h.update(array("q", tokens).tobytes())
    return h.digest()


class BlockPool:
    """Physical blocks: a free list, a reference count per block, and the prefix cache with LRU eviction.

    Ids below `reserved` are never handed out (the model may keep a scratch block there). A block is in exactly
    one of three states: free (in the free list), held (refcount > 0), or cached-idle (refcount 0, registered
    in the prefix cache, reusable until evicted). `num_free` counts free and cached-idle blocks alike: both can
    be allocated.
    """

    def __init__(self, num_blocks: int, block_size: int, reserved: int = 0) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, not {block_size}")
        if num_blocks <= reserved:
            raise ValueError(
                f"a KV pool of {num_blocks} block(s) with {reserved} reserved has no block to hand out; "
                "raise --kv-cache-bytes or lower --kv-block-size"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.reserved = reserved
        self._free: collections.deque[int] = collections.deque(range(reserved, num_blocks))
        self._refs = [0] * num_blocks
        self._hash_of: dict[int, BlockHash] = {}  # cached blocks -> their key
        self._cached: dict[BlockHash, int] = {}  # key -> cached block
        self._idle: collections.OrderedDict[int, None] = (
            collections.OrderedDict()
        )  # cached, refcount 0; LRU first

    @property
    def capacity(self) -> int:
        """Blocks that can ever be handed out."""
        return self.num_blocks - self.reserved

    @property
    def num_free(self) -> int:
        """Blocks an `allocate` can take now (free + cached-idle)."""
        return len(self._free) + len(self._idle)

    @property
    def num_used(self) -> int:
        """Blocks held by at least one row."""
        return self.capacity - self.num_free

    @property
    def num_cached(self) -> int:
        """Blocks registered in the prefix cache (held or idle)."""
        return len(self._cached)

    def refcount(self, block: int) -> int:
        return self._refs[block]

    def allocate(self, n: int) -> list[int] | None:
        """`n` blocks, each with refcount 1; None (nothing taken) if fewer than `n` can be had. The free list
        is used first; then the least recently released cached blocks are evicted from the prefix cache."""
        if n > self.num_free:
            return None
        out = []
        for _ in range(n):
            if self._free:
                block = self._free.popleft()
            else:
                block, _ = self._idle.popitem(last=False)
                del self._cached[self._hash_of.pop(block)]
            self._refs[block] = 1
            out.append(block)
        return out

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block. A block nobody holds goes back to the free list, or, if cached,
        to the idle end of the LRU (blocks released together: the last one is evicted first, so a prefix
        outlives its tails). Releasing a block nobody holds is a bookkeeping bug and raises."""
        for block in reversed(blocks):
            if self._refs[block] <= 0:
                raise RuntimeError(f"KV block {block} released twice (refcount already 0)")
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if block in self._hash_of:
                    self._idle[block] = None
                else:
                    self._free.append(block)

    def lookup(self, key: BlockHash) -> int | None:
        """The cached block registered under `key`, or None (does not take a reference)."""
        return self._cached.get(key)

    def take(self, block: int) -> None:
        """Take one more reference to a cached block (a prefix-cache hit)."""
        if self._refs[block] == 0:
            del self._idle[block]
        self._refs[block] += 1

    def is_idle(self, block: int) -> bool:
        return block in self._idle

    def register(self, block: int, key: BlockHash) -> bool:
        """Cache a held, fully computed block under `key`. False (nothing changes) if `key` is cached already
        (another row computed the same block: this copy stays private) or the block has a key already."""
        if key in self._cached or block in self._hash_of:
            return False
        if self._refs[block] <= 0:
            raise RuntimeError(f"KV block {block} is registered in the prefix cache while nobody holds it")
        self._cached[key] = block
        self._hash_of[block] = key
        return True


class KVBlocks:
    """Per-row block tables over a `BlockPool`, and the prefix cache's hash chains.

    A row is `admit`ted (its table covers its stream, reusing cached full blocks of its prefix), `grow`s one
    position at a time while decoding, `commit`s what each step computed (full blocks join the prefix cache),
    and is `free`d when it ends, fails, is cancelled or preempted. Every method is O(blocks it touches).
    """

    def __init__(self, pool: BlockPool) -> None:
        self.pool = pool
        self.block_size = pool.block_size
        self._tables: dict[int, list[int]] = {}
        self._chains: dict[int, list[BlockHash]] = {}  # keys of the row's leading computed full blocks
        # Blocks a row holds beside its table, never written: memory the model keeps for the row outside the
        # pool (an encoder-decoder row's encoder keys/values), charged to the pool so admission counts it.
        self._extra: dict[int, list[int]] = {}
        self.hit_positions = 0  # positions served from the prefix cache (admit)
        self.queried_positions = 0  # positions looked up in it (admit)

    def blocks_for(self, positions: int) -> int:
        return -(-positions // self.block_size)

    def table(self, seq_id: int) -> list[int]:
        """The row's block table (its own list: do not modify)."""
        return self._tables[seq_id]

    def __contains__(self, seq_id: int) -> bool:
        return seq_id in self._tables

    def _prefix_hits(self, adapter_key: str, stream: Sequence[int]) -> tuple[list[int], list[BlockHash]]:
        """Cached blocks of the stream's longest cached prefix of full blocks, leaving at least one position
        to compute (its logits are needed), and their keys."""
        bs = self.block_size
        hits: list[int] = []
        chain: list[BlockHash] = []
        parent = ROOT_HASH
        for i in range((len(stream) - 1) // bs):
            key = block_hash(parent, adapter_key, stream[i * bs : (i + 1) * bs])
            block = self.pool.lookup(key)
            if block is None:
                break
            hits.append(block)
            chain.append(key)
            parent = key
        return hits, chain

    def admit(
        self,
        seq_id: int,
        adapter_key: str,
        stream: Sequence[int],
        positions: int,
        reuse: bool = True,
        extra: int = 0,
    ) -> int | None:
        """Give a row without blocks a table covering `positions` (>= len(stream)) stream positions, reusing
        the cached blocks of its prefix (unless not `reuse`: a row that needs its prompt's logits computes
        every position), and `extra` blocks held beside it until it is freed (a reservation, never written).
        Returns how many leading positions are already computed (a multiple of block_size, < len(stream)), or
        None if the free blocks do not suffice (then nothing is taken)."""
        if seq_id in self._tables:
            raise RuntimeError(f"row {seq_id} already holds KV blocks")
        hits, chain = self._prefix_hits(adapter_key, stream) if reuse else ([], [])
        fresh = self.blocks_for(positions) - len(hits)
        # Idle hits leave the free count when taken: they cannot also be allocated as fresh blocks.
        if fresh + extra > self.pool.num_free - sum(self.pool.is_idle(b) for b in hits):
            return None
        for block in hits:
            self.pool.take(block)
        new = self.pool.allocate(fresh)
        reserved = self.pool.allocate(extra)
        assert new is not None and reserved is not None
        self._tables[seq_id] = hits + new
        if reserved:
            self._extra[seq_id] = reserved
        self._chains[seq_id] = chain
        cached = len(hits) * self.block_size
        self.hit_positions += cached
        self.queried_positions += len(stream)
        return cached

    def grow(self, seq_id: int, positions: int) -> bool:
        """Extend the row's table to cover `positions` stream positions; False if the free blocks do not
        suffice (then nothing is taken)."""
        table = self._tables[seq_id]
        more = self.blocks_for(positions) - len(table)
        if more <= 0:
            return True
        new = self.pool.allocate(more)
        if new is None:
            return False
        table.extend(new)
        return True

    def fork(self, parent: int, child: int, positions: int, extra: int = 0) -> tuple[int, int] | bool | None:
        """Give `child` (holding no blocks) the parent's first `positions` computed positions: its full blocks
        shared (one more reference each), the partial last one, if any, a fresh block the caller fills with a
        copy; and `extra` reserved blocks of its own (as `admit`). Returns (source, copy) block ids for that
        copy, None when there is no partial block, or False (nothing taken) when the free blocks do not suffice."""
        if child in self._tables:
            raise RuntimeError(f"row {child} already holds KV blocks")
        full, partial = divmod(positions, self.block_size)
        table = self._tables[parent]
        new = self.pool.allocate((1 if partial else 0) + extra)
        if new is None:
            return False
        if extra:
            self._extra[child] = new[len(new) - extra :]
            new = new[: len(new) - extra]
        for block in table[:full]:
            self.pool.take(block)
        self._tables[child] = table[:full] + new
        self._chains[child] = list(self._chains[parent][:full])
        return (table[full], new[0]) if partial else None

    def commit(self, seq_id: int, adapter_key: str, stream: Sequence[int], computed: int) -> None:
        """The row's first `computed` stream positions now hold keys and values: register its newly full
        blocks in the prefix cache (`stream` must hold at least those positions' tokens)."""
        bs = self.block_size
        table, chain = self._tables[seq_id], self._chains[seq_id]
        for i in range(len(chain), computed // bs):
            parent = chain[-1] if chain else ROOT_HASH
            key = block_hash(parent, adapter_key, stream[i * bs : (i + 1) * bs])
            self.pool.register(table[i], key)
            chain.append(key)

    def free(self, seq_id: int) -> None:
        """Release every block of the row (it ended, failed, was cancelled or preempted); idempotent."""
        table = self._tables.pop(seq_id, None)
        self._chains.pop(seq_id, None)
        if table:
            self.pool.release(table)
        reserved = self._extra.pop(seq_id, None)
        if reserved:
            self.pool.release(reserved)
