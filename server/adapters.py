"""`AdapterRegistry`: the one object the routes and the engine talk to about adapters.

It owns the hot-swap `AdapterStore` (server/store: its catalog of names, host and device tiers, leases,
content-hash versions; every `MultiAdapterModel.add/remove` goes through it) and adds what only the server
knows: the base model's name (never an adapter's), the operator's `--adapter` and `--adapter-dir` (trusted
sources), which adapters to validate at startup, and classification labels. Nothing reaches past it.

A request holds a lease from before it is queued until the engine drops its row; whether the adapter exists,
is valid and is resident is checked once, there:

    lease = await registry.acquire(adapter_id)          # 404 unknown, 4xx invalid, waits for its load
    GenerationRequest(adapter=adapter_id, lease=lease, ...)     # the engine runs lease.model_name, releases it
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from adapters_core.multi import LoadedAdapter, MultiAdapterModel

from .errors import ConflictError
from .settings import Settings
from .store import (
    AdapterInfo,
    AdapterRecord,
    AdapterSource,
    AdapterStore,
    Lease,
    ResidentKey,
    StoreConfig,
    StoreMetrics,
)
from .store.on_demand import OnDemand

log = logging.getLogger("swapyard.adapters")
LABEL_MAP_FILE = "label_map.json"  # written by `swapyard train` for classification adapters
HEAD_MODULES = ("classifier", "score")


def store_config(settings: Settings) -> StoreConfig:
    """The store's knobs from the server's settings (the device budget is the model's: modeling.py)."""
    return StoreConfig(
        adapter_roots=(settings.adapter_root,) if settings.adapter_root else (),
        uploads_root=settings.uploads_dir,
        allow_hub=settings.allow_hub_adapters,
        allow_bin_weights=settings.allow_bin_weights,
        hub_owners=settings.hub_owners(),
        host_budget_bytes=settings.adapter_host_bytes,
        max_rank=settings.max_adapter_rank,
        max_adapter_bytes=settings.max_adapter_bytes,
        capacity_timeout_s=settings.adapter_wait_s,
    )


def on_demand_policy(settings: Settings) -> OnDemand | None:
    """`--on-demand-adapters`: which unknown names load on first use (store/on_demand.py); None when off."""
    if not settings.on_demand_adapters:
        return None
    owners = settings.hub_owners() if settings.allow_hub_adapters else None
    return OnDemand(hub_owners=frozenset(owners or ()), local=settings.adapter_root is not None)


def _head_size(loaded: LoadedAdapter) -> int | None:
    """Rows of the adapter's own classification head (a modules_to_save override), if it has one."""
    for path, params in loaded.parsed.overrides.items():
        if path.split(".")[-1] in HEAD_MODULES or any(f".{h}." in f".{path}." for h in HEAD_MODULES):
            weight = params.get("weight")
            if weight is not None and weight.dim() in (2, 4):  # a Linear, or a segmenter's 1×1 convolution
                return int(weight.shape[0])
    return None


def _label_map(directory: str) -> dict[int, str] | None:
    path = Path(directory) / LABEL_MAP_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return {int(k): str(v) for k, v in data.get("id2label", {}).items()}


class AdapterRegistry:
    """Name -> adapter for the server, over one MultiAdapterModel and the store it owns."""

    def __init__(
        self,
        model: MultiAdapterModel,
        *,
        base_name: str,
        base_id2label: dict[int, str],
        resident: str,
        config: StoreConfig | None = None,
        metrics: StoreMetrics | None = None,
        on_demand: OnDemand | None = None,
    ) -> None:
        self.model = model
        self.base_name = base_name
        self.base_id2label = base_id2label
        self.resident = resident
        self._store = AdapterStore(model, config, metrics=metrics)
        self._operator: list[str] = []  # --adapter names, validated at startup whatever `preload` says
        self._labels: dict[ResidentKey, dict[int, str]] = {}  # version -> id2label
        self._on_demand = on_demand  # unknown names that load on first use (None: off, unknown is a 404)

    @property
    def model_lock(self) -> threading.Lock:
        """Held around every model change; the engine holds it around each step."""
        return self._store.model_lock

    @property
    def max_adapter_bytes(self) -> int:
        """The largest adapter file accepted (--max-adapter-bytes)."""
        return self._store.config.max_adapter_bytes

    # -- startup (operator-given, trusted sources) ---------------------------------------------------
    def check_name(self, name: str) -> None:
        if name == self.base_name:
            raise ConflictError(f"adapter name {name!r} is the base model's name; choose another name")

    def register(self, name: str, source: str) -> AdapterInfo:
        """Register `--adapter NAME=SOURCE`: a local directory, else a Hub id (validated at `start`)."""
        self.check_name(name)
        if os.path.isdir(source):
            where = self._store.policy.local_trusted(source)
        else:
            repo, _, revision = source.partition("@")
            where = AdapterSource("hub", repo, revision=revision or None)
        info = self._store.register(name, where)
        self._operator.append(name)
        return info

    def register_dir(self, directory: str) -> list[str]:
        """Register every sub-directory of `directory` with an adapter_config.json, named after it."""
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"--adapter-dir {directory} is not a directory")
        names = self._store.register_dir(directory)
        for name in names:
            self.check_name(name)
        return names

    async def start(self, preload: int) -> None:
        """Restore uploads, then validate and load the operator's adapters and up to `preload` in all:
        a broken `--adapter` fails startup, as a typo in a flag should."""
        self._store.restore_uploads()
        names = self._operator + [n for n in self._store.catalog.names() if n not in self._operator]
        for i, name in enumerate(names):
            if i >= preload and name not in self._operator:
                break
            try:
                async with self._store.acquire(name):
                    pass
            except Exception:
                if name in self._operator:
                    raise
                log.warning(
                    "adapter %s cannot be loaded; requests for it will get the error", name, exc_info=True
                )
        log.info("%d adapter(s) registered, %d resident", len(self._store.catalog), len(self.model.adapters))

    async def close(self) -> None:
        await self._store.close()

    # -- requests --------------------------------------------------------------------------------------
    async def acquire(self, name: str | None) -> Lease | None:
        """A lease on `name`'s current version (None for the base model: no lease). The one check of a
        request's adapter: unknown is a 404 (never the base model), invalid a 4xx, no room a 503. With
        on-demand adapters, an unknown name that matches is registered here and loads on this first use."""
        if name is None:
            return None
        registered = self._register_on_demand(name)
        try:
            return await self._store.acquire(name)
        except Exception:
            # Its files never parsed: unknown again (a later request tries afresh), not a broken entry.
            if (
                registered is not None
                and registered.content_hash is None
                and self._store.catalog.find(name) is registered
            ):
                self._store.catalog.remove(name)
            raise

    def _register_on_demand(self, name: str) -> AdapterRecord | None:
        """Register `name` if it is unknown and on-demand loading matches it. Synchronous on the event loop:
        concurrent requests for one name find one record and share its one load."""
        if self._on_demand is None or name in self._store.catalog or name == self.base_name:
            return None
        source = self._on_demand.source_for(name, self._store.policy)
        if source is None:
            return None
        log.info("adapter %s loads on demand from %s", name, source.describe())
        self._store.register(name, source)
        return self._store.catalog.find(name)

    def info(self, name: str) -> AdapterInfo:
        """One adapter's info; an unknown name is a 404."""
        return self._store.get(name)

    def infos(self) -> list[AdapterInfo]:
        return self._store.list()

    def resolve_model(self, model: str) -> str | None:
        """OpenAI `model` -> adapter name (None for the base model's own name; `acquire` checks the rest)."""
        return None if model == self.base_name else model

    def labels(self, id2label: dict[int, str], size: int) -> list[str]:
        """Label names of a head with `size` outputs (transformers' `LABEL_i` where the map has none)."""
        return [id2label.get(i, f"LABEL_{i}") for i in range(size)]

    def id2label(self, lease: Lease | None) -> dict[int, str]:
        """The labels of the leased adapter's head (None = the base head). Ask while holding the lease: a head
        is read from the model, where the adapter is only while leased."""
        if lease is None:
            return self.base_id2label
        key = lease.key
        if key not in self._labels:
            record = self._store.catalog.find(key.name)
            found = None
            if record is not None and record.source.kind in ("local", "upload"):
                found = _label_map(record.source.location)
            loaded = self.model.adapters.get(key.model_name)
            size = _head_size(loaded) if loaded is not None else None
            if found is None and size is not None:
                # A PEFT SEQ_CLS adapter carries its head but not its labels: the base's names fit only
                # when the sizes agree; otherwise transformers' default names.
                base = self.base_id2label
                found = base if len(base) == size else {i: f"LABEL_{i}" for i in range(size)}
            self._labels[key] = found or {}
        return self._labels[key]

    # -- admin (routes/adapters.py, behind the admin key) ------------------------------------------------
    async def upload(self, name: str, config: bytes, weights: bytes) -> AdapterInfo:
        """Validate an uploaded adapter completely, store it, and make it `name`'s current version."""
        self.check_name(name)
        return await self._store.upload(name, config, weights)

    async def load(
        self,
        name: str,
        *,
        hub_id: str | None = None,
        path: str | None = None,
        revision: str | None = None,
        subfolder: str | None = None,
    ) -> AdapterInfo:
        """(Re)load `name` from the Hub (`hub_id`) or from a path inside an adapter root, within the source
        policy; validated before it replaces the current version."""
        self.check_name(name)
        policy = self._store.policy
        if hub_id is not None:
            source = policy.hub(hub_id, revision=revision, subfolder=subfolder)
        elif path is not None:
            source = policy.local_from_request(path)
        else:
            raise ValueError("load() needs hub_id or path")
        return await self._store.load(name, source)

    async def delete(self, name: str, *, wait: bool = False) -> None:
        """Unregister and unload `name` (409 while in use, unless `wait`)."""
        await self._store.delete(name, wait=wait)
