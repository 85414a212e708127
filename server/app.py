"""`create_app(settings, engine=None)`: the FastAPI app, its lifespan and its dependencies.

The lifespan loads the base model and adapters (unless an engine is passed in, as tests do to share one
model), starts the engine thread, and stops it on shutdown. Nothing lives at module level: two apps in one
process have separate engines, settings and metric registries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from .auth import require_admin, require_api_key
from .deps import AppState
from .engine import Engine, build_engine
from .errors import RateLimitedError, install_error_handlers
from .metrics import Metrics
from .middleware import (
    BodyLimitMiddleware,
    InflightMiddleware,
    MetricsMiddleware,
    ReceiveTimeoutMiddleware,
    UnhandledErrorMiddleware,
)
from .ratelimit import CallerMiddleware, RateLimiter, parse_rates
from .routes import adapters, classify, embeddings, generate, openai, ops, tgi_compat, tokenize, vision
from .routes.docs import OPENAPI_URL, keyed_docs_router
from .settings import Settings

log = logging.getLogger("swapyard.server")


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """Build the app. With `engine`, the lifespan starts that engine instead of loading a model."""
    metrics = engine.metrics if engine is not None else Metrics()
    limiter = RateLimiter(parse_rates(settings.rate_limit)) if settings.rate_limit else None
    state = AppState(settings=settings, metrics=metrics, rate_limiter=limiter)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        built = engine
        if built is None:
            # Loading takes seconds to minutes: keep it off the event loop.
            built = await asyncio.to_thread(build_engine, settings, metrics)
        # Validate the operator's adapters and preload the first ones on this loop (it serves their leases).
        await built.registry.start(settings.preload_adapters)
        if limiter is not None:
            built.rate_limit = _counted(limiter, metrics)
        built.start()
        state.engine = built
        log.info(
            "ready: serving %s with %d adapter(s)", built.registry.base_name, len(built.registry.infos())
        )
        try:
            yield
        finally:
            state.engine = None
            if limiter is not None:  # a test's engine may serve another app next
                built.rate_limit = lambda cost: None
            built.draining = True
            await asyncio.to_thread(built.stop)
            await built.registry.close()

    keyed = settings.api_key is not None or settings.admin_key is not None
    app = FastAPI(
        title="Swapyard",
        summary="One frozen base model, many PEFT adapters, one adapter per request.",
        version="0.1.0",
        lifespan=lifespan,
        # With keys, the docs are served by keyed_docs_router (or not at all), never open.
        openapi_url=None if keyed else OPENAPI_URL,
        docs_url=None if keyed else "/docs",
        redoc_url=None if keyed else "/redoc",
    )
    app.state.swapyard = state
    install_error_handlers(app)
    # Added first = innermost. Added last = outermost: metrics see every response, including 413s from the
    # body limit; the unhandled-error layer wraps everything.
    app.add_middleware(ReceiveTimeoutMiddleware, timeout_s=settings.request_read_timeout_s)
    # An upload carries two files of up to --max-adapter-bytes each, plus the multipart framing.
    upload_limit = 2 * settings.max_adapter_bytes + (64 << 10)
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_request_bytes,
        overrides={("POST", "/v1/adapters"): upload_limit},
    )
    app.add_middleware(InflightMiddleware, state=state)
    app.add_middleware(CallerMiddleware, keyed=keyed)  # who pays for the tokens (--rate-limit)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(UnhandledErrorMiddleware)

    inference = [Depends(require_api_key)]
    for module in (generate, classify, openai, tokenize, embeddings, tgi_compat, vision):
        app.include_router(module.router, dependencies=inference)
    app.include_router(ops.router)
    app.include_router(adapters.router)  # admin key (its own dependency)
    if keyed and settings.docs_when_keyed == "require-key":
        # The API key when there is one (the admin key works too); else only the admin key exists.
        app.include_router(keyed_docs_router(app, require_api_key if settings.api_key else require_admin))
    return app


def _counted(limiter: RateLimiter, metrics: Metrics) -> Callable[[int], None]:
    """The limiter's charge, counting refusals in swapyard_rejected_requests{reason="rate_limited"}."""

    def charge(cost: int) -> None:
        try:
            limiter.charge(cost)
        except RateLimitedError:
            metrics.rejected.labels("rate_limited").inc()
            raise

    return charge
