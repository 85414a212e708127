"""Prometheus metrics, prefix `swapyard_`, in a registry that belongs to one app (never the global one).

Label sets are bounded: `route` is the route's path template (or "other"), `status` the HTTP status code.
A server may hold thousands of adapters, so adapter names become labels only through `AdapterLabels`: the
first `max_adapter_labels` names seen get their own series, every later one is counted as "(other)".
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Not valid adapter names (those are [A-Za-z0-9._-]), so they never collide with one.
BASE_LABEL = "(base)"
OTHER_LABEL = "(other)"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class AdapterLabels:
    """The bounded `adapter` label: a name's own value for the first `limit` names seen, then "(other)"."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()  # called from the event loop and from the engine thread

    def __call__(self, adapter: str | None) -> str:
        """The label of the adapter's public name (None = the base model)."""
        if adapter is None:
            return BASE_LABEL
        with self._lock:
            if adapter not in self._seen and len(self._seen) >= self.limit:
                return OTHER_LABEL
            self._seen.add(adapter)
        return adapter


class Metrics:
    """All of one server's metrics."""

    def __init__(self, max_adapter_labels: int = 64) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.adapter_label = AdapterLabels(max_adapter_labels)
        self.requests = Counter(
            "swapyard_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.request_latency = Histogram(
            "swapyard_request_duration_seconds",
            "time from request to full response",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "swapyard_time_to_first_token_seconds",
            "time from admission to the queue to the first generated token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.generated_tokens = Counter("swapyard_generated_tokens", "tokens generated", registry=r)
        self.prompt_tokens = Counter("swapyard_prompt_tokens", "prompt tokens prefilled", registry=r)
        self.queue_depth = Gauge("swapyard_queue_depth", "requests waiting to be admitted", registry=r)
        self.running_rows = Gauge("swapyard_running_rows", "rows in the running batch", registry=r)
        self.batch_size = Histogram(
            "swapyard_batch_size", "rows per model step", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_adapters = Histogram(
            "swapyard_batch_distinct_adapters",
            "distinct adapters (base counted as one) per model step",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "swapyard_rejected_requests", "requests refused before running", ["reason"], registry=r
        )
        # The paged KV cache (engine/paged.py): how full it is, how often rows are recomputed, prefix reuse.
        self.kv_blocks_used = Gauge("swapyard_kv_blocks_used", "KV cache blocks held by rows", registry=r)
        self.kv_blocks_free = Gauge(
            "swapyard_kv_blocks_free",
            "KV cache blocks that can be allocated (free, or cached prefixes nobody holds)",
            registry=r,
        )
        self.preemptions = Counter(
            "swapyard_preemptions",
            "rows whose KV blocks were taken back when the cache ran out (recomputed later)",
            registry=r,
        )
        self.prefix_cache_queries = Counter(
            "swapyard_prefix_cache_queried_tokens",
            "stream positions looked up in the prefix cache",
            registry=r,
        )
        self.prefix_cache_hits = Counter(
            "swapyard_prefix_cache_hit_tokens",
            "stream positions served from the prefix cache (not recomputed)",
            registry=r,
        )
        # Per adapter (bounded label set, see AdapterLabels): what the dashboard shows per adapter.
        self.adapter_requests = Counter(
            "swapyard_adapter_requests",
            "requests accepted by the engine, by adapter",
            ["adapter"],
            registry=r,
        )
        self.adapter_tokens = Counter(
            "swapyard_adapter_generated_tokens", "tokens generated, by adapter", ["adapter"], registry=r
        )

    def observe_step(self, adapters: list[str | None]) -> None:
        """One forward over these rows (one adapter name per row)."""
        self.batch_size.observe(len(adapters))
        self.batch_adapters.observe(len(set(adapters)))

    def observe_request(self, adapter: str | None) -> None:
        """One request accepted for `adapter` (None = the base model)."""
        self.adapter_requests.labels(self.adapter_label(adapter)).inc()

    def observe_tokens(self, adapters: list[str | None]) -> None:
        """One token generated per entry of `adapters` (one adapter name per row)."""
        self.generated_tokens.inc(len(adapters))
        for adapter in adapters:
            self.adapter_tokens.labels(self.adapter_label(adapter)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
