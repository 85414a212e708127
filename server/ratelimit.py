"""Per-API-key token-rate limits (`--rate-limit`): a token bucket per caller and per rate, 429 with Retry-After.

Format: the `limits` library's rate notation, counted in tokens: `20000/minute`, `20000 per minute`,
`500/10 seconds`, several joined by `;` or `,` (`20000/minute; 1000000/day`: each must have room).

What a request costs, charged when it is queued (the engine's `rate_limit` hook, so every route is covered):
a generation its prompt tokens + `max_new_tokens` (the most it may produce: OpenAI counts `max_tokens` the same
way), an embedding or classification job its input tokens. A bucket holds up to the rate's amount and refills
continuously (amount / window per second); a request is queued only when every bucket of its caller holds its
cost, else it is a 429 whose Retry-After says when they will; a cost above a rate's whole amount can never
pass and is a 422. A refused request takes nothing.

Who the caller is: with --api-key or --admin-key, the bearer token (auth has checked it; kept as a hash);
without keys, the client's address (any token would do there, so tokens cannot be the identity).

Why not the `limits` library's limiters (its rate notation is used): its storages read `time.time()` inline
(tests could only patch the library's module to control the clock), and its moving window keeps one list
entry per unit of cost — one per token here.
"""

from __future__ import annotations

import contextvars
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from limits import parse_many
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import InvalidInputError, RateLimitedError

MAX_IDLE_BUCKETS = 10_000  # buckets kept before the full (idle) ones are dropped: a full bucket is a new one

_caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("swapyard_caller", default=None)


@dataclass(frozen=True)
class TokenRate:
    """`amount` tokens per `window_s` seconds, and how the flag spelled it."""

    amount: int
    window_s: float
    text: str

    @property
    def per_second(self) -> float:
        return self.amount / self.window_s


def parse_rates(value: str) -> tuple[TokenRate, ...]:
    """`--rate-limit` -> its rates; ValueError naming the format when it does not parse."""
    try:
        items = parse_many(value)
    except ValueError:
        raise ValueError(
            f"--rate-limit {value!r} is not a rate: give tokens per window, e.g. '20000/minute', "
            "'500 per 10 seconds', or several joined by ';' ('20000/minute; 1000000/day')"
        ) from None
    rates = tuple(TokenRate(item.amount, float(item.get_expiry()), str(item)) for item in items)
    if any(rate.amount < 1 for rate in rates):
        raise ValueError(f"--rate-limit {value!r}: every rate needs at least 1 token per window")
    return rates


class _Bucket:
    """Token levels of one caller, one per rate, as of `updated` (clock seconds)."""

    def __init__(self, rates: tuple[TokenRate, ...], now: float) -> None:
        self.levels = [float(rate.amount) for rate in rates]
        self.updated = now

    def refill(self, rates: tuple[TokenRate, ...], now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.levels = [min(r.amount, lvl + elapsed * r.per_second) for r, lvl in zip(rates, self.levels)]
        self.updated = now

    def full(self, rates: tuple[TokenRate, ...]) -> bool:
        return all(lvl >= r.amount for r, lvl in zip(rates, self.levels))


class RateLimiter:
    """Token buckets per caller. `clock` (seconds, monotonic) is injectable: tests never sleep."""

    def __init__(self, rates: tuple[TokenRate, ...], clock: Callable[[], float] = time.monotonic) -> None:
        self.rates = rates
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def charge(self, cost: int, caller: str | None = None) -> None:
        """Take `cost` tokens from the caller's buckets (default: the caller of the request being served; none
        outside a request: no limit), or raise `RateLimitedError` (429, Retry-After) / `InvalidInputError`."""
        caller = caller if caller is not None else _caller.get()
        if caller is None:
            return
        for rate in self.rates:
            if cost > rate.amount:
                raise InvalidInputError(
                    f"this request may use {cost} tokens (prompt + max new tokens), more than the rate limit of "
                    f"{rate.text} tokens (--rate-limit) allows at once; ask for fewer max tokens"
                )
        now = self.clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            self._prune()
            bucket = self._buckets[caller] = _Bucket(self.rates, now)
        bucket.refill(self.rates, now)
        waits = [(cost - lvl) / r.per_second for r, lvl in zip(self.rates, bucket.levels) if lvl < cost]
        if waits:
            seconds = max(1, math.ceil(max(waits)))
            raise RateLimitedError(
                f"rate limit reached: this request needs {cost} tokens and your budget ({self.describe()}) "
                f"has room again in {seconds} s (Retry-After)",
                retry_after_s=seconds,
            )
        bucket.levels = [lvl - cost for lvl in bucket.levels]

    def describe(self) -> str:
        return "; ".join(rate.text for rate in self.rates)

    def _prune(self) -> None:
        if len(self._buckets) < MAX_IDLE_BUCKETS:
            return
        now = self.clock()
        for caller, bucket in list(self._buckets.items()):
            bucket.refill(self.rates, now)
            if bucket.full(self.rates):
                del self._buckets[caller]


def caller_identity(scope: Scope, keyed: bool) -> str:
    """Who a request is for rate limiting (module docstring)."""
    if keyed:
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return "key:" + hashlib.sha256(token.strip().encode()).hexdigest()[:32]
    client = scope.get("client")
    return f"client:{client[0] if client else 'unknown'}"


class CallerMiddleware:
    """Names the caller of each HTTP request (a context variable the `RateLimiter` reads when the engine
    charges the request's tokens). Plain ASGI: streaming responses pass through untouched."""

    def __init__(self, app: ASGIApp, keyed: bool) -> None:
        self.app = app
        self.keyed = keyed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _caller.set(caller_identity(scope, self.keyed))
        try:
            await self.app(scope, receive, send)
        finally:
            _caller.reset(token)
