"""Graceful shutdown: on SIGTERM, drain before uvicorn stops.

uvicorn alone stops accepting connections at once on SIGTERM, so a load balancer still sending traffic sees
connection errors, not a clean 503. `DrainingServer` first drains:

    SIGTERM ─► /ready and new requests answer 503 (AppState.begin_drain); accepted requests keep running,
               including those still waiting for their adapter to load
            ─► every in-flight request has finished, or --drain-timeout-s has passed
            ─► uvicorn's own shutdown (close connections, lifespan: stop the engine, close the store)

A second SIGTERM, or Ctrl-C, skips the wait.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn

from .deps import AppState

log = logging.getLogger("swapyard.server")


class DrainingServer(uvicorn.Server):
    """A uvicorn server that drains `state` for up to `drain_timeout_s` seconds on SIGTERM."""

    def __init__(self, config: uvicorn.Config, state: AppState, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.state = state
        self.drain_timeout_s = drain_timeout_s
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.drain_deadline is None and self.drain_timeout_s > 0:
            self.drain_deadline = time.monotonic() + self.drain_timeout_s
            self.state.begin_drain()
            log.info(
                "SIGTERM: draining %d request(s) for up to %.0f s", self.state.inflight, self.drain_timeout_s
            )
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        drained = self.state.inflight == 0
        if (
            self.drain_deadline is not None
            and not self.should_exit
            and (drained or time.monotonic() >= self.drain_deadline)
        ):
            if not drained:
                log.warning("drain timeout: %d request(s) still running", self.state.inflight)
            # Shut down as uvicorn would have on the signal (it re-raises it on exit).
            self._captured_signals.append(signal.SIGTERM)
            self.should_exit = True
        return await super().on_tick(counter)
