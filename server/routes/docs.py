"""`/docs`, `/redoc` and `/openapi.json` behind a key, for servers started with `--api-key` or `--admin-key`.

The schema lists every route, admin ones included, so it is not left open when the routes are keyed
(`--docs-when-keyed require-key`, the default; `off` removes them). Without keys FastAPI serves them as usual.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

OPENAPI_URL = "/openapi.json"


def keyed_docs_router(app: FastAPI, require_key: Any) -> APIRouter:
    """The three documentation routes, each behind the `require_key` dependency."""
    router = APIRouter(include_in_schema=False, dependencies=[Depends(require_key)])

    @router.get(OPENAPI_URL)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @router.get("/docs")
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=OPENAPI_URL, title=f"{app.title} - docs")

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=OPENAPI_URL, title=f"{app.title} - ReDoc")

    return router
