"""The server bench/bench_fairness.py drives, behind one interface (`Target`):

- `ServerTarget`: bench/fairness_server.py (`swapyard serve` plus a step-log route) in its own process, driven
  by an asyncio open-loop client (httpx.AsyncClient) — the way production is measured;
- `InProcess`: the app in this process (TestClient, one thread per request in flight): the engine thread shares
  the GIL with the client threads and the app's event loop.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from bench.serving.servers import ServerProcess
from bench.steplog import EngineLog, StepLog

Arrivals = list[tuple[float, str]]


POLICIES = ("vtc", "fifo")  # + "strict" at commit ca12e21 (`--fair-share strict`, not kept: bench/README.md)


def set_policy(engine: Any, policy: str) -> None:
    """Admit by `policy` from now on and start from nobody served: vtc (the engine's VTC order + max-min row
    shares) or fifo (`VirtualTokenCounter.fifo`, this benchmark's hook)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    engine.fairness.fifo = policy == "fifo"
    engine.fairness.counters.clear()  # each policy starts from nobody served


def body(adapter: str, text: str, new: int) -> dict[str, Any]:
    return {"inputs": text, "parameters": {"adapter_id": adapter, "max_new_tokens": new}}


class Target:
    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None: ...

    def post(self, adapter: str, text: str, new: int) -> float:
        """Seconds from submit to the whole response of one request."""
        raise NotImplementedError

    def run(self, arrivals: Arrivals, text: str, new: int) -> dict[str, list[float]]:
        """Send each request at its arrival second (open loop); every request's seconds, by adapter."""
        raise NotImplementedError

    def reset(self, policy: str) -> None:
        """Clear the step log and the fair counters; admit by `policy` (`POLICIES`)."""
        raise NotImplementedError

    def log(self) -> StepLog:
        raise NotImplementedError

    def cpu_seconds(self) -> tuple[float, float] | None:
        """CPU seconds used so far by the server process and by this one (None in process)."""
        return None


class ServerTarget(Target):
    def __init__(self, flags: list[str], log_path: Path, threads: int) -> None:
        command = [sys.executable, "-m", "bench.fairness_server", *flags, "--host", "127.0.0.1"]
        self.server = ServerProcess("swapyard", [*command, "--log-level", "warning"], log_path, threads)
        self.server.start()
        self.server.wait_ready(300)
        self.client = httpx.Client(base_url=self.server.url, timeout=None)

    def close(self) -> None:
        self.client.close()
        self.server.stop()

    def post(self, adapter: str, text: str, new: int) -> float:
        start = time.perf_counter()
        self.client.post("/generate", json=body(adapter, text, new)).raise_for_status()
        return time.perf_counter() - start

    def run(self, arrivals: Arrivals, text: str, new: int) -> dict[str, list[float]]:
        return asyncio.run(self._run(arrivals, text, new))

    async def _run(self, arrivals: Arrivals, text: str, new: int) -> dict[str, list[float]]:
        results: dict[str, list[float]] = {}
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(base_url=self.server.url, timeout=None, limits=limits) as client:

            async def one(name: str) -> None:
                start = time.perf_counter()
                response = await client.post("/generate", json=body(name, text, new))
                response.raise_for_status()
                results.setdefault(name, []).append(time.perf_counter() - start)

            tasks = []
            start = time.perf_counter()
            for at, name in arrivals:
                delay = start + at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(name)))
            await asyncio.gather(*tasks)
        return results

    def reset(self, policy: str) -> None:
        self.client.post("/bench/reset", params={"policy": policy}).raise_for_status()

    def log(self) -> StepLog:
        return StepLog.from_json(self.client.get("/bench/log").json())

    def cpu_seconds(self) -> tuple[float, float] | None:
        fields = Path(f"/proc/{self.server.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = 100.0  # os.sysconf("SC_CLK_TCK") on Linux
        return (int(fields[11]) + int(fields[12])) / ticks, time.process_time()


class InProcess(Target):
    def __init__(self, flags: list[str]) -> None:
        from fastapi.testclient import TestClient

        from server.app import create_app
        from server.engine import build_engine
        from swapyard.serve_cli import parse_settings

        config = parse_settings(flags)
        self.engine = build_engine(config)
        self.steplog = EngineLog(self.engine)
        self.client = TestClient(create_app(config, engine=self.engine)).__enter__()

    def close(self) -> None:
        self.client.__exit__(None, None, None)

    def post(self, adapter: str, text: str, new: int) -> float:
        start = time.perf_counter()
        response = self.client.post("/generate", json=body(adapter, text, new))
        if response.status_code != 200:
            raise RuntimeError(response.text)
        return time.perf_counter() - start

    def run(self, arrivals: Arrivals, text: str, new: int) -> dict[str, list[float]]:
        results: dict[str, list[float]] = {}
        lock = threading.Lock()

        def one(name: str) -> None:
            seconds = self.post(name, text, new)
            with lock:
                results.setdefault(name, []).append(seconds)

        threads = []
        start = time.perf_counter()
        for at, name in arrivals:
            delay = start + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            thread = threading.Thread(target=one, args=(name,))
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
        return results

    def reset(self, policy: str) -> None:
        set_policy(self.engine, policy)
        self.steplog.clear()

    def log(self) -> StepLog:
        return self.steplog.copy()
