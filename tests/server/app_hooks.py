"""Explicit hooks on the real app in process, for the API tests (never the clock):

- `paged_client`: the app on the paged engine, over the real paged core or the reference double
  (paged_double.py), with every `StepPlan` it runs recorded;
- `AcquireCounter`: counts the adapter registry's acquires per name, and lets a test wait for a count.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from paged_double import ReferencePagedModel

from adapters_core.paged.plan import StepPlan
from server.app import create_app
from server.engine import build_engine
from server.settings import Settings


@contextmanager
def paged_client(
    model: str = "core", kv_blocks: int | None = None, **settings: Any
) -> Iterator[tuple[TestClient, Any, list[StepPlan]]]:
    """The real app on the paged engine over `model`: "double" (the reference double) or "core" (the real paged
    core). `kv_blocks`: a KV pool of that many blocks. Yields the client, the engine and every plan run."""
    config = Settings(**settings)
    engine = build_engine(config)
    if model == "double":
        engine.model = ReferencePagedModel(engine.model)
    if kv_blocks is not None:
        size = kv_blocks * engine.model.kv_block_bytes(engine.paging.block_size)
        engine.paging = dataclasses.replace(engine.paging, kv_cache_bytes=size)
    plans: list[StepPlan] = []
    step = engine.model.paged_step

    def recording(plan: StepPlan) -> Any:
        plans.append(plan)
        return step(plan)

    engine.model.paged_step = recording
    with TestClient(create_app(config, engine=engine), raise_server_exceptions=False) as client:
        yield client, engine, plans


class AcquireCounter:
    """Wraps `registry.acquire` (for the test's duration, through `monkeypatch`): `counts[name]` is how many
    times `name` was acquired, counted as each acquire starts; `wait(name, count)` blocks until it reached
    `count` (TimeoutError after `timeout` seconds: a safety net against a hang, not a timing assumption)."""

    def __init__(self, registry: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: collections.Counter[str | None] = collections.Counter()
        self._cond = threading.Condition()
        acquire = registry.acquire

        async def counting(name: str | None) -> Any:
            with self._cond:
                self.counts[name] += 1
                self._cond.notify_all()
            return await acquire(name)

        monkeypatch.setattr(registry, "acquire", counting)

    def wait(self, name: str | None, count: int, timeout: float = 60.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.counts[name] >= count, timeout):
                raise TimeoutError(f"{name!r} was acquired {self.counts[name]} times, never {count}")
