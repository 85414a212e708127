"""Leases: a request's pin on one adapter version, held from admission until the request ends.

    async with store.acquire("fr") as lease:
        model(input_ids=ids, adapter_names=[lease.model_name])   # the version resident when acquired

or, when the holder outlives a block (the engine keeps it with the request): `lease = await store.acquire(n)`
... `lease.release()`. Acquire on the store's event loop; release from anywhere (another thread, e.g. an
engine thread, hands the release to the loop). Releasing twice is harmless.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import Any

from .device import DeviceEntry
from .keys import ResidentKey


class Lease:
    """A pin on one resident adapter version: it is not evicted or unloaded while the lease is held."""

    def __init__(self, entry: DeviceEntry, on_release: Callable[[DeviceEntry], None]) -> None:
        self._entry = entry
        self._on_release = on_release
        self._loop = asyncio.get_running_loop()
        self._released = threading.Lock()  # taken once, by the first release, whichever thread it runs on
        self.released = False

    @property
    def key(self) -> ResidentKey:
        """The leased version: the adapter's public name and content hash."""
        return self._entry.key

    @property
    def name(self) -> str:
        """The adapter's public name."""
        return self._entry.key.name

    @property
    def model_name(self) -> str:
        """The name to pass to `MultiAdapterModel.forward/prefill/classify(adapter_names=[...])`."""
        return self._entry.key.model_name

    @property
    def chat_template(self) -> str | None:
        """The leased version's own chat template (None: the base's applies)."""
        return self._entry.chat_template

    def share(self) -> Lease:
        """Another lease on the same version, released on its own: for another holder of one request (a row
        of its `n`). Only while this one is held (its pin keeps the version resident), on the store's loop."""
        if self.released:
            raise RuntimeError(f"{self!r} is released: it cannot be shared")
        self._entry.leases += 1
        return Lease(self._entry, self._on_release)

    def release(self) -> None:
        """End the lease (idempotent). Off the loop thread, the bookkeeping is scheduled onto the loop."""
        if not self._released.acquire(blocking=False):
            return
        self.released = True
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._on_release(self._entry)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_release, self._entry)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Lease({self.model_name!r}, released={self.released})"


class Acquire:
    """What `store.acquire(name)` returns: await it for a `Lease`, or use it as `async with`."""

    def __init__(self, acquire: Callable[[], Awaitable[Lease]]) -> None:
        self._acquire = acquire
        self._lease: Lease | None = None

    def __await__(self) -> Generator[Any, None, Lease]:
        return self._acquire().__await__()

    async def __aenter__(self) -> Lease:
        self._lease = await self._acquire()
        return self._lease

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._lease is not None:
            self._lease.release()
