"""The one error hierarchy of `kernels`: every error raised on purpose here is a `KernelError`."""

from __future__ import annotations


class KernelError(Exception):
    """Base class of every error that `kernels` raises on purpose."""


class ShapeError(KernelError, ValueError):
    """A tensor or metadata argument has the wrong shape, dtype, device or value."""


class SlotError(KernelError, ValueError):
    """A pool slot id is out of range, already holds an adapter (load) or holds none (evict)."""


class PoolFullError(KernelError, MemoryError):
    """Loading an adapter needs more bytes than the pool has free."""

    def __init__(self, message: str, *, needed_bytes: int, free_bytes: int, budget_bytes: int) -> None:
        super().__init__(message)
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        self.budget_bytes = budget_bytes


class BackendError(KernelError, RuntimeError):
    """The requested backend cannot run here (bad `SWAPYARD_KERNELS`, no Triton, no CUDA)."""
