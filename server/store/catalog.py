"""The catalog: every adapter the store knows by name (thousands), resident or not.

A record says where the adapter comes from and what is known about its current version. `generation` grows
each time the name is (re)registered, reloaded or re-uploaded: a load started for an older generation still
serves the requests that asked before the change, and its result is retired when they finish.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from .errors import AdapterExistsError, UnknownAdapterError
from .keys import ResidentKey
from .metrics import Tier
from .parsing import HostAdapter
from .sources import AdapterSource, check_record_name

_generations = itertools.count(1)


@dataclass
class AdapterRecord:
    """What the store knows about one name. Fields after `generation` are filled by the first load."""

    name: str
    source: AdapterSource
    generation: int
    content_hash: str | None = None
    method: str | None = None
    task_type: str | None = None
    rank: int | None = None
    size_bytes: int | None = None
    revision: str | None = None
    loaded_at: float | None = None
    probe_max_delta: float | None = None
    hits: int = 0
    on_disk: bool = False  # files on local disk: a local/upload source, or a Hub download in the HF cache

    @property
    def key(self) -> ResidentKey | None:
        """The current version, once its content is known."""
        return ResidentKey(self.name, self.content_hash) if self.content_hash else None

    def learn(self, adapter: HostAdapter, now: float) -> None:
        """Take the facts of a freshly parsed version."""
        self.content_hash = adapter.content_hash
        self.method = adapter.method
        self.task_type = adapter.task_type
        self.rank = adapter.rank
        self.size_bytes = adapter.nbytes
        self.revision = adapter.revision or self.source.revision
        self.loaded_at = now
        self.probe_max_delta = adapter.probe_max_delta
        self.on_disk = True


@dataclass(frozen=True)
class AdapterInfo:
    """A snapshot of one adapter for `/v1/adapters` and `/v1/models`."""

    name: str
    method: str | None
    task_type: str | None
    rank: int | None
    size_bytes: int | None
    source: str
    revision: str | None
    content_hash: str | None
    tier: Tier
    loaded_at: float | None
    probe_max_delta: float | None
    hits: int
    leases: int


def snapshot(record: AdapterRecord, *, tier: Tier, leases: int) -> AdapterInfo:
    """The public view of `record`, with what only the store knows (its tier, its leases)."""
    return AdapterInfo(
        name=record.name,
        method=record.method,
        task_type=record.task_type,
        rank=record.rank,
        size_bytes=record.size_bytes,
        source=record.source.describe(),
        revision=record.revision,
        content_hash=record.content_hash,
        tier=tier,
        loaded_at=record.loaded_at,
        probe_max_delta=record.probe_max_delta,
        hits=record.hits,
        leases=leases,
    )


class AdapterCatalog:
    """name -> `AdapterRecord`. Lives on the event loop thread."""

    def __init__(self) -> None:
        self._records: dict[str, AdapterRecord] = {}

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, name: str) -> bool:
        return name in self._records

    def names(self) -> list[str]:
        return sorted(self._records)

    def get(self, name: str) -> AdapterRecord:
        record = self._records.get(name)
        if record is None:
            raise UnknownAdapterError(
                f"adapter {name!r} is not registered; list adapters with GET /v1/adapters or load it with "
                "POST /v1/adapters/{name}/load."
            )
        return record

    def find(self, name: str) -> AdapterRecord | None:
        return self._records.get(name)

    def put(self, name: str, source: AdapterSource, *, replace: bool) -> AdapterRecord:
        """A new record (a new generation) for `name`; `AdapterExistsError` if taken and not `replace`."""
        check_record_name(name, source)
        if name in self._records and not replace:
            raise AdapterExistsError(f"an adapter named {name!r} is already registered.")
        record = AdapterRecord(name=name, source=source, generation=next(_generations))
        record.on_disk = source.kind in ("local", "upload")
        old = self._records.get(name)
        if old is not None:
            record.hits = old.hits
        self._records[name] = record
        return record

    def remove(self, name: str) -> AdapterRecord:
        record = self.get(name)
        del self._records[name]
        return record
