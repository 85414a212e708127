"""Bearer-key auth: an optional API key for inference routes, a separate admin key for adapter management.

    inference routes  no --api-key: open.  Else `Authorization: Bearer <api key>` (the admin key works too).
    admin routes      no --admin-key: off (404, as if absent).  Else the admin key only; the API key is 403.

Keys are compared with `hmac.compare_digest` (constant time), never with `==`.
"""

from __future__ import annotations

import hmac

from fastapi import Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from .deps import get_settings
from .errors import ForbiddenError, UnauthorizedError


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _matches(token: str | None, key: str | None) -> bool:
    return token is not None and key is not None and hmac.compare_digest(token.encode(), key.encode())


def require_api_key(request: Request) -> None:
    """Dependency of the inference routes."""
    settings = get_settings(request)
    if settings.api_key is None:
        return
    token = _bearer(request)
    if token is None:
        raise UnauthorizedError("this server needs an API key: send `Authorization: Bearer <key>`")
    if not (_matches(token, settings.api_key) or _matches(token, settings.admin_key)):
        raise UnauthorizedError("the API key is not valid")


def require_admin(request: Request) -> None:
    """Dependency of the admin routes (`/v1/adapters`)."""
    settings = get_settings(request)
    if settings.admin_key is None:
        raise StarletteHTTPException(404, "admin routes are off on this server (start it with --admin-key)")
    token = _bearer(request)
    if token is None:
        raise UnauthorizedError("admin routes need the admin key: send `Authorization: Bearer <admin key>`")
    if _matches(token, settings.admin_key):
        return
    if _matches(token, settings.api_key):
        raise ForbiddenError("the API key cannot manage adapters; use the admin key")
    raise UnauthorizedError("the admin key is not valid")
