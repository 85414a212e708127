"""Errors of the adapter store, each a subclass of the server error that gives its HTTP status.

The store raises these (and lets adapters_core's validation errors through: `AdapterShapeError`,
`AdapterWeightsError`, `UnsafeFormatError`, `NoTargetModulesError`, `AdapterConfigError`,
`UnsupportedError`), so `server/errors.py`'s one table maps every store failure to its status by class:

    InvalidAdapterNameError, SourceNotAllowedError  -> 400 / 403   (the request named something it may not)
    UnknownAdapterError (server)                    -> 404
    AdapterExistsError, AdapterInUseError           -> 409
    UploadTooLargeError                             -> 413
    RankTooLargeError, adapters_core load errors    -> 422
    StoreBusyError                                  -> 503         (every device slot leased past the timeout)
    UploadsDiskFullError                            -> 507         (the uploads root has no space left)
"""

from __future__ import annotations

from adapters_core.errors import AdapterLoadError
from server.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    InsufficientStorageError,
    NotReadyError,
    PayloadTooLargeError,
    UnknownAdapterError,
)

__all__ = [
    "AdapterExistsError",
    "AdapterInUseError",
    "InvalidAdapterNameError",
    "RankTooLargeError",
    "SourceNotAllowedError",
    "StoreBusyError",
    "UnknownAdapterError",
    "UploadTooLargeError",
    "UploadsDiskFullError",
]


class InvalidAdapterNameError(BadRequestError):
    """An adapter name or a requested path is malformed (`..`, an absolute path, a separator, ...)."""


class SourceNotAllowedError(ForbiddenError):
    """The source is well-formed but outside policy: a path outside every adapter root (also through a
    symlink), a Hub owner not on the allow-list, or the Hub disabled."""


class AdapterExistsError(ConflictError):
    """`register(..., replace=False)` for a name that is already registered."""


class AdapterInUseError(ConflictError):
    """`delete` (without `wait=True`) of an adapter that running or queued requests hold leases on."""

    def __init__(self, message: str, *, leases: int) -> None:
        super().__init__(message)
        self.leases = leases


class UploadTooLargeError(PayloadTooLargeError):
    """An uploaded (or fetched) adapter is larger than `max_adapter_bytes`."""


class RankTooLargeError(AdapterLoadError):
    """The adapter's LoRA rank is above the store's configured maximum."""


class StoreBusyError(NotReadyError):
    """No device room could be made in time: every resident adapter is leased by a running request."""


class UploadsDiskFullError(InsufficientStorageError):
    """Writing an upload failed for lack of space (ENOSPC, EDQUOT); nothing half-written is left behind."""
