"""Prometheus metrics, prefix `swapyard_`, in a registry that belongs to one app (never the global one).

Label sets are bounded: `route` is the route's path template (or "other"), `status` the HTTP status code.
Adapter names never become labels — a server may hold thousands — only counts of them do.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """All of one server's metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
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

    def observe_step(self, adapters: list[str | None]) -> None:
        """One forward over these rows (one adapter name per row)."""
        self.batch_size.observe(len(adapters))
        self.batch_adapters.observe(len(set(adapters)))

    def render(self) -> bytes:
        return generate_latest(self.registry)
