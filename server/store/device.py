"""The device tier: adapters resident in the MultiAdapterModel's pools, evicted least recently used first.

The model owns the device budget (its slots; each layer's pool, a share of `adapter_memory_bytes`; and the
bytes of module copies and prompt tables); this tier does not count bytes against a budget of its own. It adds an adapter, and when the model answers
`AdapterCapacityError` it evicts the least recently used unleased adapter and adds again, or waits for a
lease to end. An adapter that does not fit even into an empty model is an `AdapterTooLargeError`.

All bookkeeping runs on the event loop thread; the model is touched only in one dedicated worker thread
(`model.add` / `model.remove`, under `model_lock`, which the engine also holds while it runs a forward). One
thread means removals and additions reach the model in the order they were decided: an eviction decided
before an addition frees its slot and pages before that addition runs.

Eviction takes the least recently used entry that no lease and no waiting acquirer holds. An adapter with a
lease is never evicted; a load that finds no room waits for a lease to end, up to its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from adapters_core.errors import AdapterCapacityError, AdapterLoadError
from adapters_core.multi.model import MultiAdapterModel

from .errors import StoreBusyError
from .keys import ResidentKey
from .metrics import StoreMetrics
from .parsing import HostAdapter

log = logging.getLogger("swapyard.store")


class AdapterTooLargeError(AdapterLoadError):
    """One adapter does not fit into the model's pools even when no other adapter is resident."""


@dataclass(eq=False)
class DeviceEntry:
    """One adapter version resident in the model (as `key.model_name`); `nbytes`: its parsed tensors."""

    key: ResidentKey
    nbytes: int
    loaded_at: float
    leases: int = 0
    stale: bool = False  # the name moved on (re-upload, reload, delete): unload once the last lease ends
    waiting: Callable[[], int] = field(default=lambda: 0)  # acquirers awaiting the load that made this entry
    chat_template: str | None = None  # the version's own chat template (store/templates.py)

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def evictable(self) -> bool:
        return self.leases == 0 and self.waiting() == 0


class DeviceTier:
    """Device residency of adapter versions for one `MultiAdapterModel`."""

    def __init__(
        self, model: MultiAdapterModel, *, model_lock: threading.Lock, metrics: StoreMetrics
    ) -> None:
        self.model = model
        self.entries: OrderedDict[ResidentKey, DeviceEntry] = OrderedDict()  # least recently used first
        self.used_bytes = 0  # reported, not budgeted: the model's pools are the budget
        # One thread: model changes reach the model in the order they were decided (module docstring).
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="swapyard-device")
        self._lock = model_lock
        self._metrics = metrics
        self._adding: dict[ResidentKey, asyncio.Future[DeviceEntry | None]] = {}
        self._removals: set[asyncio.Future[None]] = set()
        self._room: asyncio.Event | None = None

    # -- accounting ------------------------------------------------------------------------------
    def _victim(self) -> DeviceEntry | None:
        return next((e for e in self.entries.values() if e.evictable), None)

    def touch(self, entry: DeviceEntry) -> None:
        if self.entries.get(entry.key) is entry:
            self.entries.move_to_end(entry.key)

    def notify(self) -> None:
        """Wake loads waiting for room (a lease ended, an acquirer gave up, an entry left)."""
        if self._room is not None:
            self._room.set()
            self._room = None

    async def _wait_room(self, deadline: float) -> None:
        if self._room is None:
            self._room = asyncio.Event()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StoreBusyError(
                f"no device room: all {len(self.entries)} resident adapters are leased by running requests; "
                "retry later or raise the device budget."
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), remaining)

    def _report(self) -> None:
        self._metrics.resident("device", len(self.entries), self.used_bytes)

    # -- load ----------------------------------------------------------------------------------------
    async def load(
        self, adapter: HostAdapter, *, waiting: Callable[[], int], deadline: float, wait_for_room: bool
    ) -> DeviceEntry | None:
        """Make `adapter` resident (or find it so). None only when `wait_for_room` is False and no room
        could be made without waiting (prefetch)."""
        existing = self.entries.get(adapter.key)
        if existing is not None:
            self.touch(existing)
            return existing
        if adapter.key in self._adding:  # one addition per key: join it
            return await asyncio.shield(self._adding[adapter.key])
        future: asyncio.Future[DeviceEntry | None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "exception not retrieved"
        self._adding[adapter.key] = future
        try:
            entry = await self._add_new(adapter, waiting, deadline, wait_for_room)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            raise
        finally:
            del self._adding[adapter.key]
            self.notify()  # a load that waits for room may be waiting on this one (see _add_new)
        future.set_result(entry)
        return entry

    async def _add_new(
        self, adapter: HostAdapter, waiting: Callable[[], int], deadline: float, wait_for_room: bool
    ) -> DeviceEntry | None:
        loop = asyncio.get_running_loop()
        # Each turn adds, or evicts and tries again, or waits for room until the deadline: the loop is bounded
        # by the deadline and by the number of entries.
        while True:
            try:
                seconds = await loop.run_in_executor(self._executor, self._add, adapter)
            except AdapterCapacityError as exc:
                # A slot or a layer's pool is full (the pools are split per layer, so one layer can be full
                # while others have room): free the least recently used adapter, or wait for one to free up.
                victim = self._victim()
                if victim is not None:
                    self.evict(victim)
                elif not self.entries and len(self._adding) == 1:  # alone in an empty model: never fits
                    raise AdapterTooLargeError(
                        f"adapter {adapter.name!r} does not fit into the model's device budget even with no other "
                        f"adapter resident ({exc}); raise --adapter-device-bytes or serve a smaller adapter."
                    ) from exc
                elif wait_for_room:
                    await self._wait_room(deadline)
                else:
                    return None
                continue
            self._metrics.stage_seconds("device", seconds)
            entry = DeviceEntry(
                key=adapter.key,
                nbytes=adapter.nbytes,
                loaded_at=time.time(),
                waiting=waiting,
                chat_template=adapter.chat_template,
            )
            self.entries[entry.key] = entry
            self.used_bytes += entry.nbytes
            self._report()
            return entry

    def _add(self, adapter: HostAdapter) -> float:
        """Worker thread: copy the parsed adapter into the model's pools (no second parse)."""
        with self._lock:
            start = time.perf_counter()
            self.model.add(adapter.key.model_name, adapter.parsed)
            return time.perf_counter() - start

    # -- unload ----------------------------------------------------------------------------------------
    def evict(self, entry: DeviceEntry) -> None:
        """Take `entry` off the device now (the caller checked it is unleased, or it is stale and drained)."""
        if self.entries.get(entry.key) is not entry:
            return
        del self.entries[entry.key]
        self.used_bytes -= entry.nbytes
        self._metrics.eviction("device")
        future = asyncio.ensure_future(
            asyncio.get_running_loop().run_in_executor(self._executor, self._remove, entry.key)
        )
        self._removals.add(future)
        future.add_done_callback(self._removals.discard)
        self._report()
        self.notify()

    def _remove(self, key: ResidentKey) -> None:
        """Worker thread: free the adapter's slot and pages."""
        with self._lock:
            self.model.remove(key.model_name)

    def release(self, entry: DeviceEntry) -> None:
        """One lease on `entry` ended."""
        entry.leases -= 1
        if entry.leases == 0:
            if entry.stale and entry.evictable:
                self.evict(entry)
            self.notify()

    def retire(self, name: str, keep: ResidentKey | None = None) -> None:
        """Versions of `name` other than `keep` go now if unused, else when their last lease ends."""
        for entry in [e for e in self.entries.values() if e.name == name and e.key != keep]:
            entry.stale = True
            if entry.evictable:
                self.evict(entry)

    def evict_unused(self, name: str | None = None) -> int:
        """Evict every entry (of `name`, if given) without leases or waiters; returns how many."""
        victims = [e for e in self.entries.values() if e.evictable and name in (None, e.name)]
        for entry in victims:
            self.evict(entry)
        return len(victims)

    def holds(self, name: str) -> int:
        """Leases plus waiting acquirers on every resident version of `name`."""
        return sum(e.leases + e.waiting() for e in self.entries.values() if e.name == name)

    async def settle(self) -> None:
        """Wait until every decided removal has reached the model."""
        while self._removals:
            await asyncio.gather(*list(self._removals), return_exceptions=True)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
