"""Device pools of adapter weights that the kernels read in place, with a budget in bytes.

LoRA layout: unified paging, as in S-LoRA. One *page* is one rank unit of one adapter: a row of A
(`in_features` values) in `a_pages` and the matching column of B, stored as a row of B.T (`out_features`
values), in `bt_pages`, under the same page index. An adapter of rank r holds r pages, anywhere; its slot's
row of `page_table` lists them. Why this layout:

- The budget is spent on exactly sum(rank) pages: no padding to a maximum rank, no slots x max-rank arena.
- Pages need not be contiguous, so loads and evictions in any order never fragment the pool into failure:
  an adapter fits whenever `rank` pages are free. The allocator still prefers one contiguous run (best fit),
  which lets the reference take a view instead of a gather (`page_start`).
- Loading writes only the adapter's own pages, its own `page_table` row and its own entries of `ranks`,
  `scales`, `page_start`; evicting writes only those entries (its rank drops to 0) and never touches pages.
- The kernels read the arenas directly: one page index per rank row, each row contiguous and long, so the
  indirection costs nothing in bandwidth and no call ever copies the weights.

IA3 (`kernels.ia3_pool`): the same idea with one page (one vector) per adapter and a slot -> page table.

Empty slots are no-ops (rank 0, or no IA3 page), so a model can give an adapter the same slot id in every
module's pool and share one `BatchMeta` across modules, even when the adapter targets only some of them.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.errors import PoolFullError, ShapeError, SlotError

INDEX_BYTES = 8  # int64 tables


@dataclass(frozen=True)
class LoraWeights:
    """What the LoRA ops read: views of a pool's tensors (a snapshot of `max_rank`; take a fresh one after
    load/evict). `S` = slots, `P` = pages, `R` = rank capacity (width of the shrink intermediate).

    a_pages:    (P, H_in)  page p = row j of A (`x @ A.T` contracts over H_in) of the adapter that owns p
    bt_pages:   (P, H_out) page p = column j of B of the same adapter, i.e. row j of B.T
    page_table: (S, R)     int64; page_table[s, j] = page of rank unit j of slot s, valid for j < ranks[s]
    ranks:      (S,)       int64; 0 = empty slot (no-op)
    scales:     (S,)       float32; the LoRA scaling (lora_alpha / r, or / sqrt(r) for rsLoRA)
    page_start: (S,)       int64; first page when slot s's pages are one contiguous run, else -1
    max_rank:   host int, the largest rank loaded (launch sizing only; 0 = nothing loaded)
    """

    a_pages: Tensor  # (P, H_in)
    bt_pages: Tensor  # (P, H_out)
    page_table: Tensor  # (S, R)
    ranks: Tensor  # (S,)
    scales: Tensor  # (S,)
    page_start: Tensor  # (S,)
    max_rank: int

    @property
    def in_features(self) -> int:
        return self.a_pages.shape[1]

    @property
    def out_features(self) -> int:
        return self.bt_pages.shape[1]

    @property
    def num_slots(self) -> int:
        return self.page_table.shape[0]

    @property
    def rank_capacity(self) -> int:
        return self.page_table.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.a_pages.dtype

    @functools.cached_property
    def device(self) -> torch.device:
        return self.a_pages.device


class _PageAllocator:
    """Free pages as sorted, merged runs `[start, length]`; best-fit contiguous, else scattered pages."""

    def __init__(self, num_pages: int) -> None:
        self.runs: list[list[int]] = [[0, num_pages]] if num_pages else []
        self.num_free = num_pages

    def allocate(self, n: int) -> list[int]:
        fits = [run for run in self.runs if run[1] >= n]
        if fits:
            run = min(fits, key=lambda r: r[1])
            pages = list(range(run[0], run[0] + n))
            run[0] += n
            run[1] -= n
        else:  # no run is long enough: take pages from the front runs (still n pages in total)
            pages = []
            for run in self.runs:
                take = min(run[1], n - len(pages))
                pages.extend(range(run[0], run[0] + take))
                run[0] += take
                run[1] -= take
                if len(pages) == n:
                    break
        self.runs = [run for run in self.runs if run[1] > 0]
        self.num_free -= n
        return pages

    def free(self, pages: list[int]) -> None:
        for p in sorted(pages):
            i = bisect.bisect_left(self.runs, [p, 0])
            self.runs.insert(i, [p, 1])
        merged: list[list[int]] = []
        for run in self.runs:
            if merged and merged[-1][0] + merged[-1][1] == run[0]:
                merged[-1][1] += run[1]
            else:
                merged.append(run)
        self.runs = merged
        self.num_free += len(pages)


def check_slot(slot: int, num_slots: int) -> None:
    if not 0 <= slot < num_slots:
        raise SlotError(f"slot {slot} is out of range: this pool has slots 0..{num_slots - 1}")


class LoraPool:
    """LoRA weights of many adapters for one linear layer (`in_features -> out_features`) on one device.

    `budget_bytes` caps everything the pool allocates: the slot tables (`num_slots * (rank_capacity + 3)`
    8-byte entries) and the pages, `(in_features + out_features) * dtype size` bytes per rank unit.
    `rank_capacity` bounds the rank of one adapter (the page table's width) and the width of the shrink
    output; it costs table bytes only, never pages. Slot ids are the caller's: give an adapter the same
    slot in every module's pool and one `BatchMeta` serves them all.

    Loads and evictions are ordinary copies on the current stream, so they are ordered with the kernels
    that read the pool; a caller that loads from another stream must synchronise itself.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        budget_bytes: int,
        num_slots: int,
        rank_capacity: int = 256,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cpu",
    ) -> None:
        if min(in_features, out_features, num_slots, rank_capacity) < 1:
            raise ShapeError(
                f"in_features, out_features, num_slots and rank_capacity must be >= 1, got {in_features}, "
                f"{out_features}, {num_slots}, {rank_capacity}"
            )
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ShapeError(f"pool dtype must be float32, float16 or bfloat16, got {dtype}")
        self.page_bytes = (in_features + out_features) * torch.finfo(dtype).bits // 8
        self.table_bytes = num_slots * (rank_capacity + 3) * INDEX_BYTES
        if budget_bytes < self.table_bytes + self.page_bytes:
            raise PoolFullError(
                f"budget_bytes={budget_bytes} is too small: the slot tables alone need {self.table_bytes} bytes "
                f"and one rank unit {self.page_bytes} more; raise the budget or lower num_slots/rank_capacity",
                needed_bytes=self.table_bytes + self.page_bytes,
                free_bytes=budget_bytes,
                budget_bytes=budget_bytes,
            )
        self.budget_bytes = budget_bytes
        self.num_pages = (budget_bytes - self.table_bytes) // self.page_bytes
        dev = torch.device(device)
        self.a_pages = torch.zeros(self.num_pages, in_features, dtype=dtype, device=dev)  # (P, H_in)
        self.bt_pages = torch.zeros(self.num_pages, out_features, dtype=dtype, device=dev)  # (P, H_out)
        self.page_table = torch.zeros(num_slots, rank_capacity, dtype=torch.int64, device=dev)  # (S, R)
        self.ranks = torch.zeros(num_slots, dtype=torch.int64, device=dev)  # (S,)
        self.scales = torch.zeros(num_slots, dtype=torch.float32, device=dev)  # (S,)
        self.page_start = torch.full((num_slots,), -1, dtype=torch.int64, device=dev)  # (S,)
        self._pages: dict[int, list[int]] = {}  # slot -> its pages, host side
        self._alloc = _PageAllocator(self.num_pages)
        self._weights: LoraWeights | None = None  # the views, cached until the next load / evict

    @classmethod
    def from_adapters(
        cls,
        adapters: list[tuple[Tensor, Tensor, float] | None],
        *,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        rank_capacity: int | None = None,
    ) -> LoraPool:
        """A pool sized exactly for `adapters[slot] = (A (r, H_in), B (H_out, r), scale)` or None (empty)."""
        present = [ad for ad in adapters if ad is not None]
        if not present:
            raise ShapeError("from_adapters needs at least one adapter to know the feature sizes")
        a0, b0, _ = present[0]
        cap = rank_capacity or max(a.shape[0] for a, _, _ in present)
        page_bytes = (a0.shape[1] + b0.shape[0]) * torch.finfo(dtype).bits // 8
        total = len(adapters) * (cap + 3) * INDEX_BYTES + sum(a.shape[0] for a, _, _ in present) * page_bytes
        pool = cls(
            a0.shape[1],
            b0.shape[0],
            budget_bytes=total,
            num_slots=len(adapters),
            rank_capacity=cap,
            dtype=dtype,
            device=device,
        )
        for slot, ad in enumerate(adapters):
            if ad is not None:
                pool.load(slot, *ad)
        return pool

    # -- accounting -------------------------------------------------------------------------------------
    @property
    def num_slots(self) -> int:
        return self.page_table.shape[0]

    @property
    def rank_capacity(self) -> int:
        return self.page_table.shape[1]

    @property
    def free_bytes(self) -> int:
        """Bytes of pages not held by any adapter."""
        return self._alloc.num_free * self.page_bytes

    @property
    def used_bytes(self) -> int:
        """Bytes of the slot tables plus the pages held by adapters."""
        return self.table_bytes + (self.num_pages - self._alloc.num_free) * self.page_bytes

    def bytes_for(self, rank: int) -> int:
        """Bytes that loading an adapter of `rank` takes from the budget."""
        return rank * self.page_bytes

    def rank(self, slot: int) -> int:
        """Rank of the adapter in `slot`, 0 when the slot is empty."""
        check_slot(slot, self.num_slots)
        return len(self._pages.get(slot, ()))

    def loaded_slots(self) -> list[int]:
        return sorted(self._pages)

    def pages_of(self, slot: int) -> list[int]:
        """The page indices holding `slot`'s rank units, in rank order (empty when the slot is empty)."""
        check_slot(slot, self.num_slots)
        return list(self._pages.get(slot, ()))

    @property
    def weights(self) -> LoraWeights:
        """The views the ops read (no copy); built once per load / evict, not on every op."""
        if self._weights is None:
            self._weights = self._views()
        return self._weights

    def _views(self) -> LoraWeights:
        return LoraWeights(
            a_pages=self.a_pages,
            bt_pages=self.bt_pages,
            page_table=self.page_table,
            ranks=self.ranks,
            scales=self.scales,
            page_start=self.page_start,
            max_rank=max((len(p) for p in self._pages.values()), default=0),
        )

    # -- load / evict -----------------------------------------------------------------------------------
    def load(self, slot: int, a: Tensor, b: Tensor, scale: float) -> None:
        """Copy one adapter into `slot`: `a` = lora_A.weight (r, H_in), `b` = lora_B.weight (H_out, r).

        Writes only the adapter's own pages and `slot`'s table entries. Raises `SlotError` when `slot` is
        out of range or occupied (evict first) and `PoolFullError` when r pages are not free.
        """
        check_slot(slot, self.num_slots)
        if slot in self._pages:
            raise SlotError(
                f"slot {slot} already holds an adapter of rank {len(self._pages[slot])}; evict it first"
            )
        h_in, h_out = self.a_pages.shape[1], self.bt_pages.shape[1]
        if (
            a.dim() != 2
            or b.dim() != 2
            or a.shape[1] != h_in
            or b.shape[0] != h_out
            or a.shape[0] != b.shape[1]
        ):
            raise ShapeError(
                f"expected A (r, {h_in}) and B ({h_out}, r) with the same r, got A {tuple(a.shape)} and B {tuple(b.shape)}"
            )
        r = a.shape[0]
        if not 1 <= r <= self.rank_capacity:
            raise ShapeError(f"rank {r} is outside 1..{self.rank_capacity} (this pool's rank_capacity)")
        needed = self.bytes_for(r)
        if r > self._alloc.num_free:
            raise PoolFullError(
                f"LoRA pool full: an adapter of rank {r} needs {needed} bytes but only {self.free_bytes} of "
                f"{self.budget_bytes} bytes are free; evict an adapter or raise budget_bytes",
                needed_bytes=needed,
                free_bytes=self.free_bytes,
                budget_bytes=self.budget_bytes,
            )
        pages = self._alloc.allocate(r)
        dev = self.a_pages.device
        contiguous = pages == list(range(pages[0], pages[0] + r))
        a_rows = a.detach().to(device=dev, dtype=self.a_pages.dtype)  # (r, H_in)
        bt_rows = b.detach().t().to(device=dev, dtype=self.bt_pages.dtype)  # (r, H_out)
        if contiguous:
            self.a_pages[pages[0] : pages[0] + r].copy_(a_rows)
            self.bt_pages[pages[0] : pages[0] + r].copy_(bt_rows)
        else:
            index = torch.tensor(pages, dtype=torch.int64, device=dev)
            self.a_pages.index_copy_(0, index, a_rows)
            self.bt_pages.index_copy_(0, index, bt_rows)
        self.page_table[slot, :r] = torch.tensor(pages, dtype=torch.int64).to(dev)
        self.scales[slot] = float(scale)
        self.page_start[slot] = pages[0] if contiguous else -1
        self.ranks[slot] = r
        self._pages[slot] = pages
        self._weights = None

    def evict(self, slot: int) -> None:
        """Empty `slot`: its rank becomes 0 (the ops skip it) and its pages return to the free list.

        Writes only `slot`'s entries of `ranks`, `scales` and `page_start`; page contents are left as they are.
        """
        check_slot(slot, self.num_slots)
        if slot not in self._pages:
            raise SlotError(f"slot {slot} is empty; nothing to evict")
        self.ranks[slot] = 0
        self.scales[slot] = 0.0
        self.page_start[slot] = -1
        self._alloc.free(self._pages.pop(slot))
        self._weights = None
