"""Small ASGI middlewares: the request-body limit (413), the body-read timeout (408), the in-flight count
(drain), per-route metrics, and the last resort for unhandled errors (500, logged once).

All are plain ASGI (not BaseHTTPMiddleware) so that streaming responses pass through untouched and a
disconnect still reaches the route.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import log_server_error, retry_after
from .metrics import Metrics


async def _send_json(send: Send, status: int, payload: dict[str, str]) -> None:
    """A whole JSON error response, straight from the middleware (the connection is closed after it)."""
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    headers += [(k.lower().encode(), v.encode()) for k, v in retry_after(status).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(payload).encode()})


def _too_large(limit: int) -> str:
    return f"the request body is larger than {limit} bytes (--max-request-bytes)"


class BodyLimitMiddleware:
    """Refuse bodies over `limit` bytes: at once from Content-Length, else while the body streams in."""

    def __init__(self, app: ASGIApp, limit: int, overrides: dict[tuple[str, str], int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.overrides = overrides or {}  # (method, path) -> its own limit (adapter uploads are larger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.overrides.get((scope.get("method", ""), scope.get("path", "")), self.limit)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_json(send, 413, {"error": _too_large(limit), "error_type": "payload_too_large"})
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # chunked upload without Content-Length
                    raise StarletteHTTPException(413, _too_large(limit))
            return message

        await self.app(scope, limited_receive, send)


class ReceiveTimeoutMiddleware:
    """Bound each `receive()` of a request body by `timeout_s`: a client that stops sending mid-body (a
    slowloris, or a Content-Length never completed) gets a 408 and its connection closed, instead of holding
    a connection and a handler forever. Once the body is complete, `receive()` only waits for a disconnect
    (streaming responses listen for it the whole time), so it is no longer bounded."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                raise StarletteHTTPException(
                    408,
                    f"the request body did not arrive within {self.timeout_s:g} s "
                    "(--request-read-timeout-s); send it whole, at a steady pace",
                    headers={"Connection": "close"},
                ) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)


OPERATIONS = ("/health", "/ready", "/metrics")  # answered while draining (probes, scrapers)


class InflightMiddleware:
    """Count the HTTP requests being answered, so that a SIGTERM drain knows when they are all done, and
    refuse new ones (503) once the drain has begun. A request counts as accepted when it arrives, before
    its body is read: an upload still streaming in when SIGTERM comes is served to the end."""

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state  # deps.AppState (its `draining` flag and `inflight` counter)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.state.draining and scope.get("path") not in OPERATIONS:
            message = "the server is shutting down; retry on another replica"  # with Retry-After
            await _send_json(send, 503, {"error": message, "error_type": "not_ready"})
            return
        self.state.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.inflight -= 1


class MetricsMiddleware:
    """Count requests by route template and status; time them until the last byte is sent."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _route_template(scope)
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.request_latency.labels(route).observe(time.perf_counter() - started)


class UnhandledErrorMiddleware:
    """The outermost layer: an exception nothing else handled is logged here, once, with its traceback (a
    line only, when the engine logged it already), and answered with a JSON 500 when no response has started. It is not re-raised: Starlette's own
    ServerErrorMiddleware would re-raise it to the server, which logs the traceback a second time. When a
    response has already started, it is cut short (the server closes the connection)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            log_server_error(f"unhandled error in {scope.get('method')} {scope.get('path')}", exc)
            if not started:
                message = f"internal error: {type(exc).__name__}"
                await _send_json(send, 500, {"error": message, "error_type": "internal"})


def _route_template(scope: Scope) -> str:
    """The matched route's path (bounded set); unmatched paths are 'other'."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "other"
