"""The fetch and parse stages of a load, run in a small worker pool so the event loop never blocks.

Stage times are measured inside the worker (the work itself, not the wait for a free worker) and reported to
the metrics; a failure is counted here, once, by its bounded reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from .config import StoreConfig
from .metrics import Stage, StoreMetrics, failure_reason
from .parsing import HostAdapter, Validator, build_host_adapter
from .sources import AdapterSource, FetchedFiles, fetch

T = TypeVar("T")


class Pipeline:
    """source → `FetchedFiles` (fetch) → validated `HostAdapter` (parse)."""

    def __init__(self, config: StoreConfig, validate: Validator, metrics: StoreMetrics) -> None:
        self.config = config
        self._validate = validate
        self._metrics = metrics
        self._pool = ThreadPoolExecutor(config.load_workers, thread_name_prefix="swapyard-load")

    async def call(self, fn: Callable[[], T]) -> T:
        """Run blocking `fn` in the worker pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def _stage(self, stage: Stage, fn: Callable[[], T]) -> T:
        def timed() -> tuple[T, float]:
            start = time.perf_counter()
            result = fn()
            return result, time.perf_counter() - start

        try:
            result, seconds = await self.call(timed)
        except Exception as exc:
            self._metrics.failure(failure_reason(exc))
            raise
        self._metrics.stage_seconds(stage, seconds)
        return result

    async def read(self, name: str, source: AdapterSource) -> HostAdapter:
        """Fetch `source`'s files and parse them."""
        config = self.config
        files = await self._stage(
            "fetch",
            lambda: fetch(
                source,
                max_bytes=config.max_adapter_bytes,
                cache_dir=config.hub_cache_dir,
                token=config.hub_token,
                allow_bin_weights=config.allow_bin_weights,
            ),
        )
        return await self.parse(name, files)

    async def parse(self, name: str, files: FetchedFiles) -> HostAdapter:
        """Validate `files` completely into a `HostAdapter`."""
        return await self._stage(
            "parse", lambda: build_host_adapter(name, files, self._validate, max_rank=self.config.max_rank)
        )

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
