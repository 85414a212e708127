"""What an adapter is: PEFT-compatible configs, load/save, injection, merge, and the multi-adapter model.

A PEFT user ports a script by changing its import: `from peft import LoraConfig` becomes
`from adapters_core import LoraConfig`.
"""

from .config import AdapterConfig, PeftType, TaskType
from .errors import (
    AdapterConfigError,
    AdapterError,
    AdapterLoadError,
    AdapterNotFoundError,
    AdapterShapeError,
    AdapterWeightsError,
    NoTargetModulesError,
    UnsafeFormatError,
    UnsupportedError,
)

__all__ = [
    "AdapterConfig",
    "AdapterConfigError",
    "AdapterError",
    "AdapterLoadError",
    "AdapterNotFoundError",
    "AdapterShapeError",
    "AdapterWeightsError",
    "NoTargetModulesError",
    "PeftType",
    "TaskType",
    "UnsafeFormatError",
    "UnsupportedError",
]
