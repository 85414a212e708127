"""Two small ASGI middlewares: the request-body limit (413) and per-route request metrics.

Both are plain ASGI (not BaseHTTPMiddleware) so that streaming responses pass through untouched and a
disconnect still reaches the route.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics


def _too_large(limit: int) -> str:
    return f"the request body is larger than {limit} bytes (--max-request-bytes)"


class BodyLimitMiddleware:
    """Refuse bodies over `limit` bytes: at once from Content-Length, else while the body streams in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            body = json.dumps({"error": _too_large(self.limit), "error_type": "payload_too_large"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # chunked upload without Content-Length
                    raise StarletteHTTPException(413, _too_large(self.limit))
            return message

        await self.app(scope, limited_receive, send)


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


def _route_template(scope: Scope) -> str:
    """The matched route's path (bounded set); unmatched paths are 'other'."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "other"
