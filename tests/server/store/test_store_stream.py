"""The store under load: 1,000 registered adapters, 16 device slots, a host budget for 64, and a Zipf-skewed
stream of concurrent acquires. Every forward under a lease equals that adapter alone, nothing fails, and once
everything is unloaded the device pools, the host tier and the process's memory are back where they started.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random

import pytest
import torch
from prometheus_client import CollectorRegistry
from store_fixtures import (
    Reference,
    forward,
    make_model,
    mixed_files,
    pool_pages_used,
    rss_bytes,
    run,
    write_adapter,
)
from tiny_models import tiny_llama

from server.store import AdapterStore, HostAdapter, PrometheusStoreMetrics, StoreConfig

N_ADAPTERS = 1000
DEVICE_SLOTS = 16
HOST_ADAPTERS = 64
CONCURRENCY = 8  # requests holding or awaiting a lease at once (< DEVICE_SLOTS: someone is always evictable)
RSS_SLACK = 48 << 20  # allocator noise; a leak of the population would be far above it only at scale, hence
# the exact object-count check below as well


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, tuple[bytes, bytes]]]:
    root = str(tmp_path_factory.mktemp("population"))
    base = tiny_llama(0)
    files = {}
    for i in range(N_ADAPTERS):
        name = f"ad{i:04d}"
        files[name] = mixed_files(base, i)
        write_adapter(os.path.join(root, name), files[name])
    return root, files


def _zipf_stream(names: list[str], count: int, seed: int, s: float = 1.1) -> list[str]:
    rng = random.Random(seed)
    order = names[:]
    rng.shuffle(order)  # popularity is unrelated to name order
    weights = [1.0 / (k + 1) ** s for k in range(len(order))]
    return rng.choices(order, weights=weights, k=count)


class _Traffic:
    """Runs requests: each acquires, holds its lease across other loads, checks its forward, releases."""

    def __init__(self, store: AdapterStore, files: dict[str, tuple[bytes, bytes]], ref: Reference) -> None:
        self.store, self.files, self.ref = store, files, ref
        self.held: dict[int, tuple[str, str]] = {}  # request id -> (adapter name, resident key)
        self.max_resident = 0
        self.checked_rows = 0

    async def request(self, i: int, name: str, sem: asyncio.Semaphore, rng: random.Random) -> None:
        async with sem, self.store.acquire(name) as lease:
            self.held[i] = (name, lease.model_name)
            self.max_resident = max(self.max_resident, len(self.store.model.adapters))
            await asyncio.sleep(rng.choice((0, 0, 0.001, 0.003)))
            out = forward(self.store.model, self.store.model_lock, [lease.model_name])[0]
            assert torch.equal(out, self.ref.logits(self.files[name])), f"request {i}: {name} wrong output"
            if i % 25 == 0:
                self.mixed_batch()
            del self.held[i]

    def mixed_batch(self) -> None:
        """One forward over every lease held right now (plus a base row): each row equals its adapter alone."""
        rows = list(self.held.values())
        out = forward(self.store.model, self.store.model_lock, [key for _, key in rows] + [None])
        for r, (name, _) in enumerate(rows):
            torch.testing.assert_close(out[r], self.ref.logits(self.files[name]), rtol=0, atol=1e-5)
        self.checked_rows += len(rows)

    async def stream(self, names: list[str], seed: int) -> list[BaseException | None]:
        sem = asyncio.Semaphore(CONCURRENCY)
        rng = random.Random(seed)
        tasks = [self.request(i, n, sem, rng) for i, n in enumerate(names)]
        return await asyncio.gather(*tasks, return_exceptions=True)


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_zipf_stream_is_exact_and_memory_returns(
    population: tuple[str, dict[str, tuple[bytes, bytes]]],
) -> None:
    root, files = population
    sizes = [len(w) for _, w in files.values()]
    registry = CollectorRegistry()
    model = make_model(slots=DEVICE_SLOTS)
    store = AdapterStore(
        model,
        StoreConfig(
            host_budget_bytes=HOST_ADAPTERS * max(sizes),
            max_rank=16,
            capacity_timeout_s=30.0,
        ),
        metrics=PrometheusStoreMetrics(registry),
    )
    assert len(store.register_dir(root)) == N_ADAPTERS
    traffic = _Traffic(store, files, Reference())
    names = sorted(files)

    async def scenario() -> None:
        # warm-up (allocator, torch, reference model), then the baseline with nothing resident
        assert not [e for e in await traffic.stream(_zipf_stream(names, 60, seed=1), seed=1) if e]
        await store.unload()
        gc.collect()
        rss_before = rss_bytes()

        results = await traffic.stream(_zipf_stream(names, 600, seed=2), seed=2)
        errors = [e for e in results if e is not None]
        assert not errors, errors[:3]
        assert traffic.max_resident <= DEVICE_SLOTS
        assert traffic.checked_rows > 0
        assert store.host.used_bytes <= store.config.host_budget_bytes
        assert len(store.device.entries) <= DEVICE_SLOTS
        assert sum(i.hits for i in store.list()) == 660
        assert all(i.leases == 0 for i in store.list())

        await store.unload()
        gc.collect()
        assert store.model.adapters == {}
        assert pool_pages_used(store.model) == 0
        assert store.host.used_bytes == 0 and len(store.host) == 0
        assert store.device.used_bytes == 0
        assert not [o for o in gc.get_objects() if type(o) is HostAdapter]
        assert rss_bytes() - rss_before < RSS_SLACK
        await store.close()

    run(scenario())
    print(
        {
            s.name + str(s.labels): s.value
            for m in registry.collect()
            for s in m.samples
            if s.value and "bucket" not in s.name
        }
    )
    for tier in ("host", "disk"):
        assert _sample(registry, "swapyard_adapter_loads_total", tier=tier) > 0
    assert _sample(registry, "swapyard_adapter_hits_total", tier="device") > 0
    assert _sample(registry, "swapyard_adapter_evictions_total", tier="device") > 0
    assert _sample(registry, "swapyard_adapter_evictions_total", tier="host") > 0
    for stage in ("fetch", "parse", "device"):
        assert _sample(registry, "swapyard_adapter_load_seconds_count", stage=stage) > 0
    assert (
        sum(_sample(registry, "swapyard_adapter_load_failures_total", reason=r) for r in ("other", "shape"))
        == 0
    )
    # bounded label sets: the number of series does not depend on how many adapters were served
    series = {s.name + repr(sorted(s.labels.items())) for m in registry.collect() for s in m.samples}
    assert len(series) < 120
