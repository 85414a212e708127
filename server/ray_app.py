"""Scale-out on Ray Serve: N replicas, each a whole Swapyard server, with requests routed by adapter.

Each replica runs `create_app(settings)`: its own base model, engine and adapters, exactly what `swapyard serve`
runs, so a replica answers a request exactly as one server would. Routing is Ray Serve's model multiplexing,
not a router of ours:

    client ──(header serve_multiplexed_model_id: <adapter>)──► Ray Serve proxy (every node)
           ──► a replica that already holds <adapter>, else the replica holding the fewest ──► create_app

The header only steers; the body (`parameters.adapter_id`, OpenAI `model`) alone decides what is served, so a
missing or wrong header costs locality, never correctness. On the replica, `hold_adapter` is the
`@serve.multiplexed` loader: calling it tells Ray's routers that this replica holds the adapter, and Ray keeps
the most recently used `max_adapters` of them per replica (the device slots), forgetting the oldest. Holding
means traffic affinity: an adapter's requests keep landing where its weights are already resident in the
device pool (and host cache), so they hit instead of loading.

Start it with `swapyard-ray` (swapyard/ray_cli.py), or with Ray's own CLI on a cluster:
`serve run server.ray_app:app_builder base_model=org/model replicas=4`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .app import create_app
from .settings import Settings

log = logging.getLogger("swapyard.ray")

ADAPTER_HEADER = "serve_multiplexed_model_id"  # Ray Serve's own routing header
REPLICA_HEADER = "x-swapyard-replica"  # which replica answered: for tests, logs and debugging affinity


class _AdapterAffinity:
    """ASGI middleware: report the request's adapter to Ray's multiplexing, tag the response with the replica."""

    def __init__(self, app: ASGIApp, hold: Callable[[str], Awaitable[str]], replica_id: str) -> None:
        self.app = app
        self.hold = hold
        self.replica_header = (REPLICA_HEADER.encode(), replica_id.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: the model load and engine start pass straight through
            await self.app(scope, receive, send)
            return
        adapter = serve.get_multiplexed_model_id()  # "" when the client sent no header
        if adapter:
            await self.hold(adapter)

        async def send_tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.replica_header]}
            await send(message)

        await self.app(scope, receive, send_tagged)


@serve.deployment
@serve.ingress()
class SwapyardReplica:
    """One Swapyard server as a Ray Serve replica (settings: `Settings` fields, e.g. from `model_dump()`)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = Settings(**settings)
        self.replica_id = serve.get_replica_context().replica_id.unique_id

        # The limit is per deployment, so the multiplexed loader is made here rather than as a decorated method.
        async def hold(adapter_id: str) -> str:
            log.info("replica %s now holds adapter %s", self.replica_id, adapter_id)
            return adapter_id

        self.hold_adapter = serve.multiplexed(max_num_models_per_replica=self.settings.max_adapters)(hold)
        self.server: FastAPI | None = None  # (`self.app` is Ray's: the wrapped ASGI app)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Called by Ray after __init__: the app whose lifespan (model load, engine start) Ray then runs."""
        self.server = create_app(self.settings)
        self.server.add_middleware(_AdapterAffinity, hold=self.hold_adapter, replica_id=self.replica_id)
        return self.server

    def check_health(self) -> None:
        """Ray restarts a replica whose engine thread died."""
        engine = self.server.state.swapyard.engine if self.server is not None else None
        if engine is not None and not engine.running and not engine.draining:
            raise RuntimeError(f"replica {self.replica_id}: the engine is not running")


def build_app(
    settings: Settings, *, replicas: int = 2, replica_cpus: float = 1.0, replica_gpus: float = 0.0
) -> Application:
    """The Ray Serve application: `replicas` copies of one server, each with these resources."""
    return SwapyardReplica.options(  # type: ignore[attr-defined]
        num_replicas=replicas,
        ray_actor_options={"num_cpus": replica_cpus, "num_gpus": replica_gpus},
    ).bind(settings.model_dump())


def app_builder(args: dict[str, str]) -> Application:
    """For Ray's CLI and config files (`serve run server.ray_app:app_builder key=value ...`): the keys are
    `replicas`, `replica_cpus`, `replica_gpus` and any `Settings` field; `SWAPYARD_*` variables fill the rest."""
    args = dict(args)
    replicas = int(args.pop("replicas", 2))
    replica_cpus = float(args.pop("replica_cpus", 1.0))
    replica_gpus = float(args.pop("replica_gpus", 0.0))
    settings = Settings(**args)  # type: ignore[arg-type]  # strings: pydantic converts them
    return build_app(settings, replicas=replicas, replica_cpus=replica_cpus, replica_gpus=replica_gpus)
