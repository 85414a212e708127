"""The load client: sends a trace to one server over HTTP and times every streamed token.

Both Swapyard and the PEFT baseline speak text-generation-inference's `/generate_stream` (Server-Sent
Events, one event per token; an event with `error` fails the request). A request's times are taken on the
client, as a user sees them: sent, each token's arrival. Nothing here knows which system it talks to.

- open loop (`run_open_loop`): each request is sent at its trace arrival time, whether or not earlier ones
  have finished (S-LoRA's synthetic workload);
- closed loop (`run_closed_loop`): `concurrency` users, each sending its next request as soon as the previous
  one finished (the arrival times are ignored).

A run that outlives `deadline_s` cancels what is still running; those requests count as failed ("deadline").
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from .workload import TraceRequest


@dataclass
class RequestResult:
    """One request as the client saw it. Times are seconds since the run started."""

    index: int
    adapter: str | None
    max_new_tokens: int
    sent_s: float
    token_s: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and len(self.token_s) == self.max_new_tokens

    @property
    def output_tokens(self) -> int:
        return len(self.token_s)

    @property
    def ttft_s(self) -> float | None:
        return self.token_s[0] - self.sent_s if self.token_s else None

    @property
    def e2e_s(self) -> float | None:
        return self.token_s[-1] - self.sent_s if self.token_s else None

    @property
    def itl_s(self) -> list[float]:
        """Gaps between consecutive tokens (inter-token latency)."""
        return [b - a for a, b in zip(self.token_s, self.token_s[1:])]

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first: (last - first) / (n - 1); None for one token."""
        n = len(self.token_s)
        return (self.token_s[-1] - self.token_s[0]) / (n - 1) if n > 1 else None

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "adapter": self.adapter,
            "max_new_tokens": self.max_new_tokens,
            "sent_s": round(self.sent_s, 6),
            "token_s": [round(t, 6) for t in self.token_s],
            "error": self.error,
        }


def request_body(request: TraceRequest, adapter: str | None) -> dict[str, object]:
    return {
        "inputs": request.prompt,
        "parameters": {"adapter_id": adapter, "max_new_tokens": request.max_new_tokens, "do_sample": False},
    }


async def send(
    client: httpx.AsyncClient, url: str, request: TraceRequest, adapter: str | None, t0: float
) -> RequestResult:
    """POST one request to `url`/generate_stream and record when each token arrives."""
    result = RequestResult(request.index, adapter, request.max_new_tokens, time.perf_counter() - t0)
    try:
        async with client.stream("POST", f"{url}/generate_stream", json=request_body(request, adapter)) as r:
            if r.status_code != 200:
                body = (await r.aread()).decode(errors="replace")
                result.error = f"HTTP {r.status_code}: {body[:300]}"
                return result
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    result.error = f"{event.get('error_type', 'error')}: {event['error']}"[:300]
                    return result
                result.token_s.append(time.perf_counter() - t0)
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:300]
    return result


def _client(connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(timeout=httpx.Timeout(None, connect=30.0), limits=limits)


async def _finish(
    tasks: dict[int, asyncio.Task[RequestResult]],
    trace: Sequence[TraceRequest],
    names: Sequence[str | None],
    deadline: float,
) -> list[RequestResult]:
    """Await every task until the deadline; what is still running then is cancelled and marked."""
    pending = [t for t in tasks.values() if not t.done()]
    if pending:
        await asyncio.wait(pending, timeout=max(0.0, deadline - time.perf_counter()))
    results = []
    for request, name in zip(trace, names):
        task = tasks.get(request.index)
        if task is not None and task.done() and not task.cancelled():
            results.append(task.result())
            continue
        if task is not None:
            task.cancel()
        results.append(RequestResult(request.index, name, request.max_new_tokens, -1.0, error="deadline"))
    return results


async def run_open_loop(
    url: str,
    trace: Sequence[TraceRequest],
    names: Sequence[str | None],
    *,
    deadline_s: float,
    on_done: Callable[[], None] | None = None,
) -> tuple[list[RequestResult], float]:
    """Send `trace` at its arrival times (`names[i]` is request i's adapter); returns results, wall time."""
    t0 = time.perf_counter()
    deadline = t0 + deadline_s
    tasks: dict[int, asyncio.Task[RequestResult]] = {}
    async with _client(len(trace)) as client:
        for request, name in zip(trace, names):
            delay = t0 + request.arrival_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.perf_counter() > deadline:
                break
            task = asyncio.create_task(send(client, url, request, name, t0))
            if on_done is not None:
                task.add_done_callback(lambda _t: on_done())
            tasks[request.index] = task
        results = await _finish(tasks, trace, names, deadline)
    return results, time.perf_counter() - t0


async def run_closed_loop(
    url: str,
    trace: Sequence[TraceRequest],
    names: Sequence[str | None],
    *,
    concurrency: int,
    deadline_s: float,
    on_done: Callable[[], None] | None = None,
) -> tuple[list[RequestResult], float]:
    """`concurrency` users work through `trace` in order, each one request at a time."""
    t0 = time.perf_counter()
    deadline = t0 + deadline_s
    queue = list(zip(trace, names))[::-1]
    tasks: dict[int, asyncio.Task[RequestResult]] = {}

    async with _client(concurrency) as client:

        async def user() -> None:
            while queue and time.perf_counter() < deadline:
                request, name = queue.pop()
                tasks[request.index] = task = asyncio.create_task(send(client, url, request, name, t0))
                await task
                if on_done is not None:
                    on_done()

        users = [asyncio.create_task(user()) for _ in range(concurrency)]
        await asyncio.wait(users, timeout=deadline_s)
        for u in users:
            u.cancel()
        results = await _finish(tasks, trace, names, deadline)
    return results, time.perf_counter() - t0
