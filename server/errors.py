"""The server's error hierarchy and the one table that maps every error to an HTTP status.

Handlers and the engine raise these (or let adapters_core's errors through); `install_error_handlers` turns
each into `{"error": str, "error_type": str}` with the status from `ERROR_TABLE`. Statuses are chosen by class,
never by parsing messages.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters_core.errors import (
    AdapterConfigError,
    AdapterError,
    AdapterLoadError,
    AdapterNotFoundError,
    UnsupportedError,
)

log = logging.getLogger("swapyard.server")


class ServerError(Exception):
    """Base class of the server's own errors."""


class BadRequestError(ServerError):
    """The request cannot be served as asked (e.g. a route this base model does not support)."""


class InvalidInputError(ServerError):
    """The body parsed but a value breaks a limit or rule (too many tokens, too many stop sequences)."""


class UnknownAdapterError(ServerError):
    """A request named an adapter that is not loaded: never answered by the base model instead."""


class UnauthorizedError(ServerError):
    """Missing or wrong credentials."""


class ForbiddenError(ServerError):
    """Credentials are valid but not for this route."""


class ConflictError(ServerError):
    """A name is taken, or an adapter is in use."""


class PayloadTooLargeError(ServerError):
    """The request body exceeds `max_request_bytes`."""


class QueueFullError(ServerError):
    """`max_queued_requests` are already waiting to start."""


class RateLimitedError(ServerError):
    """The caller's token budget (--rate-limit) has no room for this request now: 429 with its own Retry-After."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


class InsufficientStorageError(ServerError):
    """The server cannot store what the request brought (its uploads disk is full): 507."""


class NotReadyError(ServerError):
    """The model is not loaded, the engine is not running, or the server is draining."""


class UnsupportedParameterError(ServerError):
    """A documented TGI/OpenAI parameter this server does not implement (yet), given a non-default value."""


class EngineError(ServerError):
    """The engine failed while running a request (a bug or a device error): 500."""


# class -> (HTTP status, error_type). Subclasses before their bases: the first match wins.
ERROR_TABLE: list[tuple[type[BaseException], int, str]] = [
    (UnknownAdapterError, 404, "unknown_adapter"),
    (AdapterNotFoundError, 404, "unknown_adapter"),
    (BadRequestError, 400, "bad_request"),
    (InvalidInputError, 422, "validation"),
    (UnsupportedParameterError, 422, "unsupported"),
    (UnauthorizedError, 401, "unauthorized"),
    (ForbiddenError, 403, "forbidden"),
    (ConflictError, 409, "conflict"),
    (PayloadTooLargeError, 413, "payload_too_large"),
    (QueueFullError, 429, "queue_full"),
    (RateLimitedError, 429, "rate_limited"),
    (NotReadyError, 503, "not_ready"),
    (InsufficientStorageError, 507, "insufficient_storage"),
    (AdapterConfigError, 422, "adapter_config"),
    (AdapterLoadError, 422, "adapter_load"),
    (UnsupportedError, 422, "unsupported"),
    (AdapterError, 400, "adapter_error"),
    (EngineError, 500, "engine_error"),
]


def status_of(exc: BaseException) -> tuple[int, str]:
    """(status, error_type) of an exception, from `ERROR_TABLE`; anything else is a 500."""
    for cls, status, error_type in ERROR_TABLE:
        if isinstance(exc, cls):
            return status, error_type
    return 500, "internal"


# Seconds a client should wait before retrying (`Retry-After`): the queue drains in about a step; loading a
# model or waiting out a drain takes longer.
RETRY_AFTER_S = {429: 1, 503: 5}


def retry_after(status: int) -> dict[str, str]:
    """The `Retry-After` header a 429 or 503 carries (DESIGN.md); none for other statuses."""
    seconds = RETRY_AFTER_S.get(status)
    return {} if seconds is None else {"Retry-After": str(seconds)}


def printable(message: str) -> str:
    """`message` as valid UTF-8: a lone surrogate echoed from the request is escaped, not a 500."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(
    status: int, error_type: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The JSON error shape of DESIGN.md, with `Retry-After` on 429 and 503."""
    return JSONResponse(
        {"error": printable(message), "error_type": error_type},
        status_code=status,
        headers={**retry_after(status), **(headers or {})},
    )


def error_payload(exc: BaseException) -> tuple[int, dict[str, str]]:
    """(status, body) for an error met after a stream has started (sent as the stream's last event)."""
    status, error_type = status_of(exc)
    message = str(exc) if status < 500 else f"internal error: {type(exc).__name__}"
    return status, {"error": printable(message), "error_type": error_type}


# Statuses raised as Starlette HTTPExceptions (routing, middlewares) -> error_type.
HTTP_ERROR_TYPES = {
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
}


def _describe_validation(exc: RequestValidationError) -> tuple[int, str, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = "; ".join(str(e.get("ctx", {}).get("error", e.get("msg"))) for e in errors)
        return 400, "invalid_json", f"the body is not valid JSON: {detail}"
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {e.get('msg')}")
    return 422, "validation", "; ".join(parts)


# -- logging a 5xx once ------------------------------------------------------------------------------------
# A failure in the engine is logged there, with its traceback, where it happened (one step can fail many
# rows); the request that receives it then logs one line, not the traceback again.
_TRACEBACK_LOGGED = "_swapyard_traceback_logged"
LOGGERS_WITH_TRACEBACKS = ("swapyard.engine", "swapyard.store", "swapyard.adapters")


class _NoteLoggedTraceback(logging.Filter):
    """Marks the exception of every record that carries a traceback (the record itself passes unchanged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            with contextlib.suppress(AttributeError):  # an exception type with __slots__: logged again
                setattr(record.exc_info[1], _TRACEBACK_LOGGED, True)
        return True


def note_logged_tracebacks() -> None:
    """Watch the loggers that log failures where they happen (idempotent: once per process)."""
    for name in LOGGERS_WITH_TRACEBACKS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoteLoggedTraceback) for f in logger.filters):
            logger.addFilter(_NoteLoggedTraceback())


def log_server_error(message: str, exc: BaseException) -> None:
    """Log a 5xx's exception: with its traceback, unless it was logged with one already."""
    if getattr(exc, _TRACEBACK_LOGGED, False):
        log.error("%s: %s: %s (traceback logged above)", message, type(exc).__name__, exc)
        return
    log.error("%s", message, exc_info=exc)
    with contextlib.suppress(AttributeError):
        setattr(exc, _TRACEBACK_LOGGED, True)


def _unparsable_body(exc: StarletteHTTPException) -> str | None:
    """Why FastAPI could not parse a JSON body ("There was an error parsing the body"), from the cause it
    chains; None for any other HTTP error."""
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None:
        return None
    if isinstance(cause, UnicodeDecodeError):
        return f"it is not UTF-8 ({cause.reason} at byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "it is nested too deeply"
    if isinstance(cause, ValueError):  # an integer of thousands of digits (Python's int_max_str_digits)
        return "a number in it is too long to decode"
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through `ERROR_TABLE` into the JSON error shape."""
    note_logged_tracebacks()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, error_type, message = _describe_validation(exc)
        return error_response(status, error_type, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = _unparsable_body(exc)
        if reason is not None:
            return error_response(400, "invalid_json", f"the body is not valid JSON: {reason}")
        error_type = HTTP_ERROR_TYPES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, error_type, str(exc.detail), headers=exc.headers)

    @app.exception_handler(ServerError)
    async def _server(request: Request, exc: ServerError) -> JSONResponse:
        status, error_type = status_of(exc)
        if status >= 500:
            log_server_error(f"engine error in {request.method} {request.url.path}", exc)
        return error_response(status, error_type, str(exc), headers=getattr(exc, "headers", None))

    @app.exception_handler(AdapterError)
    async def _adapter(_: Request, exc: AdapterError) -> JSONResponse:
        status, error_type = status_of(exc)
        return error_response(status, error_type, str(exc))

    # Any other exception is answered (and logged, once) by middleware.UnhandledErrorMiddleware: an
    # `Exception` handler here would run inside Starlette's ServerErrorMiddleware, which re-raises after
    # answering, so the server logged the same traceback a second time.
