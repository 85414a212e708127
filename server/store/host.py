"""The host tier: validated adapters in RAM, least recently used first out, under a byte budget.

Keyed by `ResidentKey` (name, content hash), so a new version of a name is a new entry and the old one simply ages
out (or is dropped at once by the store when the name moves on). Touched only from the event loop thread.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from .keys import ResidentKey
from .parsing import HostAdapter


class HostCache:
    """LRU of `HostAdapter`s whose `nbytes` sum stays within `budget_bytes`.

    `on_evict(adapter)` is called for each entry pushed out by the budget (not for explicit `pop`s).
    An adapter larger than the whole budget is not kept.
    """

    def __init__(self, budget_bytes: int, on_evict: Callable[[HostAdapter], None] | None = None) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[ResidentKey, HostAdapter] = OrderedDict()
        self._bytes = 0
        self._on_evict = on_evict

    @property
    def used_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[ResidentKey]:
        return list(self._entries)

    def get(self, key: ResidentKey) -> HostAdapter | None:
        """The entry (now most recently used), or None."""
        adapter = self._entries.get(key)
        if adapter is not None:
            self._entries.move_to_end(key)
        return adapter

    def put(self, adapter: HostAdapter) -> bool:
        """Insert or refresh `adapter`, evicting the least recently used; False if it cannot fit at all."""
        key = adapter.key
        self.pop(key)
        if adapter.nbytes > self.budget_bytes:
            return False
        while self._entries and self._bytes + adapter.nbytes > self.budget_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.nbytes
            if self._on_evict is not None:
                self._on_evict(old)
        self._entries[key] = adapter
        self._bytes += adapter.nbytes
        return True

    def pop(self, key: ResidentKey) -> HostAdapter | None:
        adapter = self._entries.pop(key, None)
        if adapter is not None:
            self._bytes -= adapter.nbytes
        return adapter

    def drop_name(self, name: str, keep: ResidentKey | None = None) -> int:
        """Drop every version of `name` except the key `keep`; returns how many were dropped."""
        keys = [k for k in self._entries if k.name == name and k != keep]
        for key in keys:
            self.pop(key)
        return len(keys)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
