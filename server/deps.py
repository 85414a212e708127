"""The app's state and the FastAPI dependencies routes declare (`EngineDep`, `SettingsDep`, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from .engine import Engine
from .errors import NotReadyError
from .metrics import Metrics
from .ratelimit import RateLimiter
from .settings import Settings


@dataclass
class AppState:
    """Everything one app owns. `engine` is None until the lifespan has loaded the model."""

    settings: Settings
    metrics: Metrics
    engine: Engine | None = None
    draining: bool = False  # SIGTERM: /ready and new requests answer 503 while running ones finish
    inflight: int = 0  # HTTP requests being answered now (InflightMiddleware)
    rate_limiter: RateLimiter | None = None  # --rate-limit (its `clock` is a test's hook)

    def begin_drain(self) -> None:
        """Stop taking new requests (InflightMiddleware answers 503, /ready too); those already accepted,
        even if their body is still arriving or their adapter still loading, run to the end."""
        self.draining = True


def get_state(request: Request) -> AppState:
    return request.app.state.swapyard


def get_settings(request: Request) -> Settings:
    return get_state(request).settings


def get_engine(request: Request) -> Engine:
    """The running engine, or 503 while loading / after shutdown began."""
    state = get_state(request)
    engine = state.engine
    if engine is None or not engine.running or engine.draining:
        raise NotReadyError("the model is not loaded yet or the server is draining; retry shortly")
    return engine


StateDep = Annotated[AppState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
