"""Operations: `GET /health` (the process is alive), `GET /ready` (model loaded, engine running, not
draining) and `GET /metrics` (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..deps import StateDep
from ..errors import error_response

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(state: StateDep) -> JSONResponse:
    engine = state.engine
    if engine is None or not engine.running or engine.draining or state.draining:
        return error_response(503, "not_ready", "the model is loading or the server is draining")
    return JSONResponse({"status": "ready", "model": engine.registry.base_name, "kind": engine.base.kind})


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
