"""Device pool of IA3 vectors, read in place by the IA3 ops; the same paging idea as `kernels.pool`.

One page = one adapter's vector l of `features` values; `slot_page` maps slots to pages (-1 = empty, a no-op).
Loading writes only the adapter's page and its `slot_page` entry; evicting writes only that entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.errors import PoolFullError, ShapeError, SlotError
from kernels.pool import INDEX_BYTES, check_slot


@dataclass(frozen=True)
class IA3Weights:
    """What the IA3 ops read: views of an `IA3Pool`.

    vectors:   (P, F) page p = the learned scaling vector l of the adapter that owns it
    slot_page: (S,)   int64; page of slot s, -1 = empty slot (no-op)
    """

    vectors: Tensor  # (P, F)
    slot_page: Tensor  # (S,)

    @property
    def features(self) -> int:
        return self.vectors.shape[1]

    @property
    def num_slots(self) -> int:
        return self.slot_page.shape[0]


class IA3Pool:
    """IA3 vectors of many adapters for one module: `features` = out_features (output side, attention/
    value targets) or in_features (input side, feed-forward targets). One page per adapter; the budget covers
    the slot table (`num_slots` int64) and the pages (`features * dtype size` bytes each).
    """

    def __init__(
        self,
        features: int,
        *,
        budget_bytes: int,
        num_slots: int,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cpu",
    ) -> None:
        if min(features, num_slots) < 1:
            raise ShapeError(f"features and num_slots must be >= 1, got {features}, {num_slots}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ShapeError(f"pool dtype must be float32, float16 or bfloat16, got {dtype}")
        self.page_bytes = features * torch.finfo(dtype).bits // 8
        self.table_bytes = num_slots * INDEX_BYTES
        if budget_bytes < self.table_bytes + self.page_bytes:
            raise PoolFullError(
                f"budget_bytes={budget_bytes} is too small: the slot table needs {self.table_bytes} bytes and one "
                f"adapter {self.page_bytes} more; raise the budget or lower num_slots",
                needed_bytes=self.table_bytes + self.page_bytes,
                free_bytes=budget_bytes,
                budget_bytes=budget_bytes,
            )
        self.budget_bytes = budget_bytes
        self.num_pages = (budget_bytes - self.table_bytes) // self.page_bytes
        dev = torch.device(device)
        self.vectors = torch.zeros(self.num_pages, features, dtype=dtype, device=dev)  # (P, F)
        self.slot_page = torch.full((num_slots,), -1, dtype=torch.int64, device=dev)  # (S,)
        self._page_of: dict[int, int] = {}
        self._free = list(range(self.num_pages - 1, -1, -1))  # stack: lowest page first
        self._weights = IA3Weights(vectors=self.vectors, slot_page=self.slot_page)  # views: built once

    @property
    def num_slots(self) -> int:
        return self.slot_page.shape[0]

    @property
    def free_bytes(self) -> int:
        return len(self._free) * self.page_bytes

    @property
    def weights(self) -> IA3Weights:
        return self._weights

    def page_of(self, slot: int) -> int | None:
        check_slot(slot, self.num_slots)
        return self._page_of.get(slot)

    def load(self, slot: int, vector: Tensor) -> None:
        """Copy one adapter's IA3 vector (PEFT's `ia3_l`, any shape with `features` elements) into `slot`."""
        check_slot(slot, self.num_slots)
        if slot in self._page_of:
            raise SlotError(f"slot {slot} already holds an IA3 vector; evict it first")
        features = self.vectors.shape[1]
        if vector.numel() != features:
            raise ShapeError(
                f"expected an IA3 vector of {features} elements, got shape {tuple(vector.shape)}"
            )
        if not self._free:
            raise PoolFullError(
                f"IA3 pool full: an adapter needs {self.page_bytes} bytes but 0 of {self.budget_bytes} bytes are "
                "free; evict an adapter or raise budget_bytes",
                needed_bytes=self.page_bytes,
                free_bytes=0,
                budget_bytes=self.budget_bytes,
            )
        page = self._free.pop()
        self.vectors[page].copy_(vector.detach().reshape(-1).to(self.vectors.dtype))
        self.slot_page[slot] = page
        self._page_of[slot] = page

    def evict(self, slot: int) -> None:
        """Empty `slot` (it becomes a no-op); writes only its `slot_page` entry."""
        check_slot(slot, self.num_slots)
        if slot not in self._page_of:
            raise SlotError(f"slot {slot} is empty; nothing to evict")
        self.slot_page[slot] = -1
        self._free.append(self._page_of.pop(slot))
