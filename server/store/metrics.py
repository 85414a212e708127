"""Metrics hooks of the adapter store: a small interface, a no-op, and a prometheus-client implementation.

Every label has a fixed, small set of values (tiers, stages, failure reasons), never an adapter name, so the
number of series is bounded however many adapters are registered. Per-adapter hit counts live in the
registry records (`/v1/adapters`), not in Prometheus.
"""

from __future__ import annotations

from typing import Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from adapters_core.errors import (
    AdapterConfigError,
    AdapterNotFoundError,
    AdapterShapeError,
    AdapterWeightsError,
    NoTargetModulesError,
    UnsafeFormatError,
    UnsupportedError,
)

from .errors import (
    RankTooLargeError,
    SourceNotAllowedError,
    StoreBusyError,
    UploadsDiskFullError,
    UploadTooLargeError,
)

Tier = Literal["device", "host", "disk", "source"]
Stage = Literal["fetch", "parse", "device"]
TIERS: tuple[Tier, ...] = ("device", "host", "disk", "source")
STAGES: tuple[Stage, ...] = ("fetch", "parse", "device")

# exception class -> failure reason label; the first match wins (subclasses first). Anything else: "other".
_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (UnsafeFormatError, "pickle"),
    (AdapterShapeError, "shape"),
    (NoTargetModulesError, "no_target_modules"),
    (AdapterWeightsError, "weights"),
    (AdapterConfigError, "config"),
    (AdapterNotFoundError, "not_found"),
    (RankTooLargeError, "rank"),
    (UploadTooLargeError, "too_large"),
    (SourceNotAllowedError, "not_allowed"),
    (UnsupportedError, "unsupported"),
    (StoreBusyError, "busy"),
    (UploadsDiskFullError, "disk_full"),
)
REASONS: tuple[str, ...] = (*(reason for _, reason in _REASONS), "other")


def failure_reason(exc: BaseException) -> str:
    """The bounded `reason` label of a load failure."""
    return next((reason for cls, reason in _REASONS if isinstance(exc, cls)), "other")


class StoreMetrics(Protocol):
    """What the store reports. `tier` of a load or hit is where the adapter was found."""

    def hit(self, tier: Tier) -> None: ...
    def load(self, tier: Tier) -> None: ...
    def eviction(self, tier: Tier) -> None: ...
    def stage_seconds(self, stage: Stage, seconds: float) -> None: ...
    def failure(self, reason: str) -> None: ...
    def resident(self, tier: Tier, adapters: int, nbytes: int) -> None: ...


class NullMetrics:
    """Reports nothing (the default when no metrics are wired)."""

    def hit(self, tier: Tier) -> None:
        pass

    def load(self, tier: Tier) -> None:
        pass

    def eviction(self, tier: Tier) -> None:
        pass

    def stage_seconds(self, stage: Stage, seconds: float) -> None:
        pass

    def failure(self, reason: str) -> None:
        pass

    def resident(self, tier: Tier, adapters: int, nbytes: int) -> None:
        pass


class PrometheusStoreMetrics:
    """prometheus-client series `swapyard_adapter_*`, registered in `registry` (one per app, never global)."""

    def __init__(self, registry: CollectorRegistry, prefix: str = "swapyard_adapter") -> None:
        self.hits = Counter(
            f"{prefix}_hits",
            "Adapter acquires by the tier the adapter was found in",
            ["tier"],
            registry=registry,
        )
        self.loads = Counter(
            f"{prefix}_loads", "Adapter loads by the tier they started from", ["tier"], registry=registry
        )
        self.evictions = Counter(
            f"{prefix}_evictions", "Adapters evicted from a tier", ["tier"], registry=registry
        )
        self.failures = Counter(
            f"{prefix}_load_failures", "Adapter loads that failed, by reason", ["reason"], registry=registry
        )
        self.load_seconds = Histogram(
            f"{prefix}_load_seconds",
            "Adapter load time by stage (fetch: read files or download; parse: validate; device: pools)",
            ["stage"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.resident_adapters = Gauge(
            f"{prefix}_resident", "Adapters resident in a tier", ["tier"], registry=registry
        )
        self.resident_bytes = Gauge(
            f"{prefix}_resident_bytes", "Bytes of adapters resident in a tier", ["tier"], registry=registry
        )
        # Pre-create every series so dashboards see zeros rather than gaps.
        for tier in TIERS:
            self.hits.labels(tier)
            self.loads.labels(tier)
            self.evictions.labels(tier)
        for stage in STAGES:
            self.load_seconds.labels(stage)
        for reason in REASONS:
            self.failures.labels(reason)

    def hit(self, tier: Tier) -> None:
        self.hits.labels(tier).inc()

    def load(self, tier: Tier) -> None:
        self.loads.labels(tier).inc()

    def eviction(self, tier: Tier) -> None:
        self.evictions.labels(tier).inc()

    def stage_seconds(self, stage: Stage, seconds: float) -> None:
        self.load_seconds.labels(stage).observe(seconds)

    def failure(self, reason: str) -> None:
        self.failures.labels(reason if reason in REASONS else "other").inc()

    def resident(self, tier: Tier, adapters: int, nbytes: int) -> None:
        self.resident_adapters.labels(tier).set(adapters)
        self.resident_bytes.labels(tier).set(nbytes)
