"""The adapter store: tiers (device → host RAM → disk → source), leases, hot-swap by content hash.

`AdapterStore` is the entry point (store.py) and owns the parts: the `AdapterCatalog` of names (catalog.py),
the host and device tiers, the load pipeline. `StoreConfig` its knobs; `Lease` what a request holds, on one
`ResidentKey` (name, content hash); `PrometheusStoreMetrics` its metrics; errors.py the error classes the
server maps to HTTP statuses.
"""

from .catalog import AdapterInfo, AdapterRecord
from .config import StoreConfig
from .device import AdapterTooLargeError
from .errors import (
    AdapterExistsError,
    AdapterInUseError,
    InvalidAdapterNameError,
    RankTooLargeError,
    SourceNotAllowedError,
    StoreBusyError,
    UnknownAdapterError,
    UploadsDiskFullError,
    UploadTooLargeError,
)
from .keys import ResidentKey
from .lease import Lease
from .metrics import NullMetrics, PrometheusStoreMetrics, StoreMetrics
from .parsing import HostAdapter, model_validator
from .sources import AdapterSource, SourcePolicy, check_name
from .store import AdapterStore

__all__ = [
    "AdapterExistsError",
    "AdapterInUseError",
    "AdapterInfo",
    "AdapterRecord",
    "AdapterSource",
    "AdapterStore",
    "AdapterTooLargeError",
    "HostAdapter",
    "InvalidAdapterNameError",
    "Lease",
    "NullMetrics",
    "PrometheusStoreMetrics",
    "RankTooLargeError",
    "ResidentKey",
    "SourceNotAllowedError",
    "SourcePolicy",
    "StoreBusyError",
    "StoreConfig",
    "StoreMetrics",
    "UnknownAdapterError",
    "UploadTooLargeError",
    "UploadsDiskFullError",
    "check_name",
    "model_validator",
]
