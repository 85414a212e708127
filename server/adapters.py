"""`AdapterRegistry`: the routes' view of adapters, over the hot-swap `AdapterStore` (server/store).

The store owns every `MultiAdapterModel.add/remove` (tiers, leases, content-hash versions); this module adds
what only the server knows: the base model's name (never an adapter's), the operator's `--adapter` and
`--adapter-dir` (trusted sources), which adapters to validate at startup, and classification labels.

A request holds a lease from before it is queued until the engine drops its row:

    lease = await registry.acquire(adapter_id)          # 404 unknown, 4xx invalid, waits for its load
    GenerationRequest(adapter=lease.adapter_name, lease=lease, ...)     # the engine releases it
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
from .store import AdapterInfo, AdapterSource, AdapterStore, Lease, StoreConfig
from .store.metrics import StoreMetrics

log = logging.getLogger("swapyard.adapters")
LABEL_MAP_FILE = "label_map.json"  # written by `swapyard train` for classification adapters
HEAD_MODULES = ("classifier", "score")


def store_config(settings: Settings) -> StoreConfig:
    """The store's knobs from the server's settings."""
    return StoreConfig(
        adapter_roots=(settings.adapter_root,) if settings.adapter_root else (),
        uploads_root=settings.uploads_dir,
        allow_hub=settings.allow_hub_adapters,
        allow_bin_weights=settings.allow_bin_weights,
        hub_owners=settings.hub_owners(),
        device_slots=settings.max_adapters,
        device_budget_bytes=settings.adapter_device_bytes,
        host_budget_bytes=settings.adapter_host_bytes,
        max_rank=settings.max_adapter_rank,
        max_adapter_bytes=settings.max_adapter_bytes,
        capacity_timeout_s=settings.adapter_wait_s,
    )


def _head_size(loaded: LoadedAdapter) -> int | None:
    """Rows of the adapter's own classification head (a modules_to_save override), if it has one."""
    for path, params in loaded.parsed.overrides.items():
        if path.split(".")[-1] in HEAD_MODULES or any(f".{h}." in f".{path}." for h in HEAD_MODULES):
            weight = params.get("weight")
            if weight is not None and weight.dim() == 2:
                return int(weight.shape[0])
    return None


def _label_map(directory: str) -> dict[int, str] | None:
    path = Path(directory) / LABEL_MAP_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return {int(k): str(v) for k, v in data.get("id2label", {}).items()}


class AdapterRegistry:
    """Name -> adapter, over one MultiAdapterModel and its store."""

    def __init__(
        self,
        model: MultiAdapterModel,
        *,
        base_name: str,
        base_id2label: dict[int, str],
        resident: str,
        config: StoreConfig | None = None,
        metrics: StoreMetrics | None = None,
    ) -> None:
        self.model = model
        self.base_name = base_name
        self.base_id2label = base_id2label
        self.resident = resident
        self.store = AdapterStore(model, config, metrics=metrics)
        self._operator: list[str] = []  # --adapter names, validated at startup whatever `preload` says
        self._labels: dict[str, dict[int, str]] = {}  # resident key -> id2label

    @property
    def model_lock(self) -> threading.Lock:
        """Held around every model change; the engine holds it around each step."""
        return self.store.model_lock

    # -- startup (operator-given, trusted sources) ---------------------------------------------------
    def check_name(self, name: str) -> None:
        if name == self.base_name:
            raise ConflictError(f"adapter name {name!r} is the base model's name; choose another name")

    def load(self, name: str, source: str) -> AdapterInfo:
        """Register `--adapter NAME=SOURCE`: a local directory, else a Hub id (validated at `start`)."""
        self.check_name(name)
        if os.path.isdir(source):
            where = self.store.policy.local_trusted(source)
        else:
            repo, _, revision = source.partition("@")
            where = AdapterSource("hub", repo, revision=revision or None)
        info = self.store.register(name, where)
        self._operator.append(name)
        return info

    def load_dir(self, directory: str) -> list[str]:
        """Register every sub-directory of `directory` with an adapter_config.json, named after it."""
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"--adapter-dir {directory} is not a directory")
        names = self.store.register_dir(directory)
        for name in names:
            self.check_name(name)
        return names

    async def start(self, preload: int) -> None:
        """Restore uploads, then validate and load the operator's adapters and up to `preload` in all:
        a broken `--adapter` fails startup, as a typo in a flag should."""
        self.store.restore_uploads()
        names = self._operator + [n for n in self.store.registry.names() if n not in self._operator]
        for i, name in enumerate(names):
            if i >= preload and name not in self._operator:
                break
            try:
                async with self.store.acquire(name):
                    pass
            except Exception:
                if name in self._operator:
                    raise
                log.warning(
                    "adapter %s cannot be loaded; requests for it will get the error", name, exc_info=True
                )
        log.info("%d adapter(s) registered, %d resident", len(self.store.registry), len(self.model.adapters))

    async def close(self) -> None:
        await self.store.close()

    # -- requests --------------------------------------------------------------------------------------
    async def acquire(self, name: str | None) -> Lease | None:
        """A lease on `name` (None for the base model: no lease)."""
        return None if name is None else await self.store.acquire(name)

    def require(self, name: str | None) -> AdapterInfo | None:
        """The adapter's info; None for the base model. Unknown names are a 404, never the base model."""
        return None if name is None else self.store.get(name)

    def resolve_model(self, model: str) -> str | None:
        """OpenAI `model` -> adapter name (None for the base model's own name)."""
        if model == self.base_name:
            return None
        self.require(model)
        return model

    def labels(self, id2label: dict[int, str], size: int) -> list[str]:
        """Label names of a head with `size` outputs (transformers' `LABEL_i` where the map has none)."""
        return [id2label.get(i, f"LABEL_{i}") for i in range(size)]

    def id2label(self, adapter_key: str | None) -> dict[int, str]:
        """The labels of a resident adapter's head (a lease's `adapter_name`; None = the base head). Ask while
        holding the lease: a head is read from the model, where the adapter is only while leased."""
        if adapter_key is None:
            return self.base_id2label
        key = adapter_key
        if key not in self._labels:
            record = self.store.registry.find(key.partition("@")[0])
            found = None
            if record is not None and record.source.kind in ("local", "upload"):
                found = _label_map(record.source.location)
            loaded = self.model.adapters.get(key)
            size = _head_size(loaded) if loaded is not None else None
            if found is None and size is not None:
                # A PEFT SEQ_CLS adapter carries its head but not its labels: the base's names fit only
                # when the sizes agree; otherwise transformers' default names.
                base = self.base_id2label
                found = base if len(base) == size else {i: f"LABEL_{i}" for i in range(size)}
            self._labels[key] = found or {}
        return self._labels[key]

    def infos(self) -> list[AdapterInfo]:
        return self.store.list()
