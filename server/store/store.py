"""`AdapterStore`: thousands of registered adapters, a few hundred resident, hot-swapped under leases.

    store = AdapterStore(multi_model, StoreConfig(adapter_roots=("/srv/adapters",), uploads_root="/srv/up"))
    store.register("fr", store.policy.local_trusted("/srv/adapters/fr"))       # lazy: nothing read yet
    async with store.acquire("fr") as lease:                                  # loads if needed, pins it
        multi_model(input_ids=ids, adapter_names=[lease.model_name])

A load goes source → (fetch: read or download the files) → (parse: validate completely) → host tier →
(device: copy into the pools). Fetch and parse run in a small thread pool, the device stage in one thread
(device.py), so the event loop never blocks and other requests keep being served. Concurrent acquires of
one name share one load. Identity is by content: each version is a `ResidentKey` (name, content hash), so a
new version of a name is a new key and a request never gets weights other than the ones current when it
acquired. The parse of validation is the one `MultiAdapterModel.add` takes: an adapter is parsed once per
load. The device budget is the model's (its slots and pools, see device.py); the host tier's is this store's.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import Iterable

from adapters_core.multi.model import MultiAdapterModel
from adapters_core.peft_names import CONFIG_NAME

from . import uploads
from .catalog import AdapterCatalog, AdapterInfo, AdapterRecord, snapshot
from .config import StoreConfig
from .device import DeviceEntry, DeviceTier
from .errors import (
    AdapterExistsError,
    AdapterInUseError,
    SourceNotAllowedError,
    StoreBusyError,
    UploadsDiskFullError,
    UploadTooLargeError,
)
from .host import HostCache
from .keys import ResidentKey
from .lease import Acquire, Lease
from .metrics import NullMetrics, StoreMetrics, Tier, failure_reason
from .parsing import HostAdapter, Validator, model_validator
from .pipeline import Pipeline
from .sources import AdapterSource, FetchedFiles, SourcePolicy, check_name, hub_cached

_ACQUIRE_ATTEMPTS = 4  # a prefetch may resolve without a device entry; an acquire then loads again


class _PendingLoad:
    """One in-flight load of one generation of a name, shared by every acquire that needs it."""

    def __init__(self) -> None:
        self.waiters = 0
        self.task: asyncio.Task[DeviceEntry | None] | None = None


class AdapterStore:
    """The tiered, leased adapter store of one `MultiAdapterModel` (see the module docstring).

    Args:
        model: the serving model; the store owns its adapters (`add` / `remove` only through the store).
        config: budgets, sources and limits.
        validator: checks a parsed (config, state) against the base; default: the model's own parser.
        metrics: a `StoreMetrics` (e.g. `PrometheusStoreMetrics`); default: none.
        model_lock: held around every `model.add/remove`; the engine holds it around each forward.
    """

    def __init__(
        self,
        model: MultiAdapterModel,
        config: StoreConfig | None = None,
        *,
        validator: Validator | None = None,
        metrics: StoreMetrics | None = None,
        model_lock: threading.Lock | None = None,
    ) -> None:
        self.config = config = config or StoreConfig()
        self.model = model
        self.policy = SourcePolicy(
            config.adapter_roots, allow_hub=config.allow_hub, hub_owners=config.hub_owners
        )
        self.catalog = AdapterCatalog()
        self.metrics: StoreMetrics = metrics or NullMetrics()
        self.model_lock = model_lock or threading.Lock()
        self.pipeline = Pipeline(config, validator or model_validator(model), self.metrics)
        self.host = HostCache(config.host_budget_bytes, on_evict=lambda _: self.metrics.eviction("host"))
        self.device = DeviceTier(model, model_lock=self.model_lock, metrics=self.metrics)
        self._loads: dict[tuple[str, int], _PendingLoad] = {}
        self._name_locks: dict[str, asyncio.Lock] = {}
        self._changed: asyncio.Event | None = None

    # -- catalog -----------------------------------------------------------------------------------
    def register(self, name: str, source: AdapterSource, *, replace: bool = False) -> AdapterInfo:
        """Make `name` known without reading anything (its first acquire loads it)."""
        if name in self.catalog and not replace:
            raise AdapterExistsError(f"an adapter named {name!r} is already registered.")
        record = self.catalog.put(name, source, replace=True)
        if source.kind == "hub":
            record.on_disk = hub_cached(source, self.config.hub_cache_dir)
        self._retire(name, keep=None)
        return self.info(record)

    def register_dir(self, root: str) -> list[str]:
        """Register every sub-directory of `root` holding an adapter_config.json, named after it."""
        names = []
        for entry in sorted(os.listdir(root)):
            path = os.path.join(root, entry)
            if os.path.isfile(os.path.join(path, CONFIG_NAME)):
                self.register(check_name(entry), self.policy.local_trusted(path, label=entry), replace=True)
                names.append(entry)
        return names

    def restore_uploads(self) -> list[str]:
        """Register the uploads that survived a restart (uploads.py keeps one version per name)."""
        if not self.config.uploads_root:
            return []
        found = uploads.scan_uploads(self.config.uploads_root)
        for name, directory in found.items():
            self.register(name, AdapterSource("upload", directory), replace=True)
        return sorted(found)

    def list(self) -> list[AdapterInfo]:
        return [self.info(self.catalog.get(n)) for n in self.catalog.names()]

    def get(self, name: str) -> AdapterInfo:
        return self.info(self.catalog.get(name))

    def info(self, record: AdapterRecord) -> AdapterInfo:
        leases = sum(e.leases for e in self.device.entries.values() if e.name == record.name)
        return snapshot(record, tier=self._tier(record), leases=leases)

    def _tier(self, record: AdapterRecord) -> Tier:
        key = record.key
        if key is not None and key in self.device.entries:
            return "device"
        if key is not None and key in self.host:
            return "host"
        return "disk" if record.on_disk else "source"

    # -- acquire / release ---------------------------------------------------------------------------
    def acquire(self, name: str) -> Acquire:
        """A lease on `name`'s current version, loading it first if needed (`await` it or `async with`).

        Raises `UnknownAdapterError` (404) for an unregistered name, the load's validation error if it
        cannot be loaded, `StoreBusyError` if no device room frees up within `capacity_timeout_s`.
        """
        return Acquire(lambda: self._acquire(name))

    async def _acquire(self, name: str) -> Lease:
        record = self.catalog.get(name)
        record.hits += 1
        for attempt in range(_ACQUIRE_ATTEMPTS):
            entry = self.device.entries.get(record.key) if record.key else None
            if attempt == 0:
                self.metrics.hit("device" if entry is not None else self._tier(record))
            if entry is None:
                pending = self._loads.get((name, record.generation)) or self._start_load(
                    record, prefetch=False
                )
                assert pending.task is not None
                pending.waiters += 1
                try:
                    # shield: one cancelled request must not cancel the load that others share
                    entry = await asyncio.shield(pending.task)
                finally:
                    pending.waiters -= 1
                    if pending.waiters == 0:
                        self.device.notify()  # a cancelled waiter may have been all that held the entry
            if entry is not None:
                entry.leases += 1
                self.device.touch(entry)
                return Lease(entry, self._release)
            record = self.catalog.get(name)  # re-read: the name may have been deleted or replaced
        raise StoreBusyError(f"adapter {name!r} could not be made resident; retry later.")

    def _release(self, entry: DeviceEntry) -> None:
        self.device.release(entry)
        self._signal()

    def prefetch(self, names: Iterable[str | None]) -> int:
        """Start loads for adapters that queued requests will need; returns how many were started.

        Unknown names are skipped (their requests get 404 at acquire). A prefetch loads into the host tier
        and onto the device only if room is free without waiting, so it never stalls a running request.
        """
        started = 0
        for name in names:
            record = self.catalog.find(name) if name else None
            if record is None or (record.key and record.key in self.device.entries):
                continue
            if (name, record.generation) not in self._loads:
                self._start_load(record, prefetch=True)
                started += 1
        return started

    # -- loading ---------------------------------------------------------------------------------------
    def _start_load(self, record: AdapterRecord, *, prefetch: bool) -> _PendingLoad:
        pending = _PendingLoad()
        slot = (record.name, record.generation)
        self._loads[slot] = pending
        task = asyncio.ensure_future(self._run_load(record, pending, prefetch=prefetch))
        pending.task = task

        def done(t: asyncio.Task[DeviceEntry | None]) -> None:
            if self._loads.get(slot) is pending:
                del self._loads[slot]
            if not t.cancelled():
                t.exception()  # retrieved here: a prefetch's failure has no other reader
            self._signal()

        task.add_done_callback(done)
        return pending

    async def _run_load(
        self, record: AdapterRecord, pending: _PendingLoad, *, prefetch: bool
    ) -> DeviceEntry | None:
        deadline = time.monotonic() + self.config.capacity_timeout_s
        adapter = self.host.get(record.key) if record.key else None
        tier: Tier = "host"
        if adapter is None:
            tier = "disk" if record.on_disk else "source"
            adapter = await self.pipeline.read(record.name, record.source)  # counts its own failures
            if self.catalog.find(record.name) is record:
                # First load, or the files changed under a local path: the content decides the version.
                record.learn(adapter, time.time())
                self.host.put(adapter)
                self._retire(record.name, keep=adapter.key)
        self.metrics.load(tier)
        try:
            entry = await self.device.load(
                adapter,
                waiting=lambda: pending.waiters,
                deadline=deadline,
                wait_for_room=not prefetch or pending.waiters > 0,
            )
        except Exception as exc:
            self.metrics.failure(failure_reason(exc))
            raise
        if entry is not None:
            current = self.catalog.find(entry.name)
            entry.stale = current is None or current.key != entry.key
        return entry

    # -- admin: load, upload, delete, unload -------------------------------------------------------------
    async def load(self, name: str, source: AdapterSource, *, replace: bool = True) -> AdapterInfo:
        """(Re)load `name` from `source` now: fetched and validated completely before it replaces anything,
        so a bad file leaves the current version serving. The result is in the host tier."""
        check_name(name)
        async with self._name_lock(name):
            if name in self.catalog and not replace:
                raise AdapterExistsError(f"an adapter named {name!r} is already registered.")
            cached = source.kind != "hub" or hub_cached(source, self.config.hub_cache_dir)
            adapter = await self.pipeline.read(name, source)
            self.metrics.load("disk" if cached else "source")
            return self._publish(name, source, adapter)

    async def upload(self, name: str, config: bytes, weights: bytes) -> AdapterInfo:
        """Validate an uploaded adapter completely, write it atomically, then make it `name`'s version."""
        check_name(name)
        root = self.config.uploads_root
        if not root:
            raise SourceNotAllowedError("uploads are off on this server: no uploads root is configured.")
        size = len(config) + len(weights)
        if size > self.config.max_adapter_bytes:
            self.metrics.failure("too_large")
            raise UploadTooLargeError(
                f"the upload is {size} bytes, above this server's limit of {self.config.max_adapter_bytes} "
                "(raise it with --max-adapter-bytes)."
            )
        async with self._name_lock(name):
            files = FetchedFiles(config, weights, origin=f"upload {name!r}")
            adapter = await self.pipeline.parse(name, files)
            try:
                directory = await self.pipeline.call(
                    lambda: uploads.write_upload(root, adapter.key, config, weights)
                )
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                self.metrics.failure("disk_full")
                raise UploadsDiskFullError(
                    f"the uploads disk is full ({exc.strerror}); nothing was stored and the current version of "
                    f"{name!r} keeps serving. Free space under the uploads directory, or delete unused adapters."
                ) from exc
            return self._publish(name, AdapterSource("upload", directory), adapter)

    def _publish(self, name: str, source: AdapterSource, adapter: HostAdapter) -> AdapterInfo:
        """Make a validated `adapter` the current version of `name`; older versions drain and go."""
        old = self.catalog.find(name)
        record = self.catalog.put(name, source, replace=True)
        record.learn(adapter, time.time())
        self.host.put(adapter)
        self._retire(name, keep=adapter.key)
        if old is not None and old.source.kind == "upload" and old.source.location != source.location:
            self._discard_upload_version(old)
        return self.info(record)

    async def delete(self, name: str, *, wait: bool = False, timeout: float | None = None) -> None:
        """Unregister `name` and unload every version of it.

        In use (leases or waiting requests) → `AdapterInUseError` (409) and nothing changes, unless `wait`:
        then the name is unregistered at once (new requests get 404) and this returns when the running
        requests have finished with it, or raises `StoreBusyError` after `timeout` seconds (its versions
        still unload when their last lease ends).
        """
        async with self._name_lock(name):
            record = self.catalog.get(name)
            in_use = self._holds(name)
            if in_use and not wait:
                raise AdapterInUseError(
                    f"adapter {name!r} is in use by {in_use} request(s); retry later or delete with ?wait=true.",
                    leases=in_use,
                )
            self.catalog.remove(name)
            self._retire(name, keep=None)
            if record.source.kind == "upload":
                self._discard_upload_version(record)
            if wait:
                await self._drain(
                    name,
                    time.monotonic() + (timeout if timeout is not None else self.config.delete_timeout_s),
                )

    async def unload(self, name: str | None = None) -> int:
        """Drop `name` (or every adapter) from the device and host tiers where no lease holds it; it stays
        registered and loads again on its next acquire. Returns how many device versions were evicted."""
        evicted = self.device.evict_unused(name)
        if name is None:
            self.host.clear()
        else:
            self.host.drop_name(name)
        self.metrics.resident("host", len(self.host), self.host.used_bytes)
        await self.device.settle()
        return evicted

    async def close(self) -> None:
        """Finish in-flight loads, apply pending removals, stop the worker threads."""
        tasks = [p.task for p in self._loads.values() if p.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.device.settle()
        self.pipeline.shutdown()
        self.device.shutdown()

    # -- helpers -----------------------------------------------------------------------------------------
    def _holds(self, name: str) -> int:
        waiting = sum(p.waiters for (n, _), p in self._loads.items() if n == name)
        return self.device.holds(name) + waiting

    def _retire(self, name: str, keep: ResidentKey | None) -> None:
        dropped = self.host.drop_name(name, keep=keep)
        if dropped:
            self.metrics.resident("host", len(self.host), self.host.used_bytes)
        self.device.retire(name, keep=keep)
        if keep is not None and keep in self.device.entries:
            self.device.entries[keep].stale = False

    def _discard_upload_version(self, record: AdapterRecord) -> None:
        """Delete an old upload's files once no load of that generation can still be reading them."""
        root = self.config.uploads_root
        if not root:
            return
        pending = self._loads.get((record.name, record.generation))
        current = self.catalog.find(record.name)

        def discard(*_: object) -> None:
            if current is None and self.catalog.find(record.name) is None:
                uploads.remove_upload(root, record.name)
            else:
                uploads.remove_version(root, record.source.location)

        if pending is not None and pending.task is not None:
            pending.task.add_done_callback(discard)
        else:
            discard()

    def _name_lock(self, name: str) -> asyncio.Lock:
        return self._name_locks.setdefault(name, asyncio.Lock())

    def _signal(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _drain(self, name: str, deadline: float) -> None:
        def busy() -> bool:
            return any(e.name == name for e in self.device.entries.values()) or any(
                n == name for n, _ in self._loads
            )

        while busy():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreBusyError(
                    f"adapter {name!r} is deleted but still in use by {self._holds(name)} request(s); it "
                    "unloads when they finish."
                )
            if self._changed is None:
                self._changed = asyncio.Event()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue
        await self.device.settle()
