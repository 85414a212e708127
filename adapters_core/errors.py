"""One error hierarchy for adapters_core.

Every message names the module or key at fault and says how to fix it; the server maps these classes
to HTTP status codes in one place (never by parsing messages).
"""

from __future__ import annotations


class AdapterError(Exception):
    """Base class of every error raised by adapters_core."""


class AdapterConfigError(AdapterError, ValueError):
    """An `adapter_config.json` or config object is invalid (bad value, missing key, unknown type)."""


class AdapterNotFoundError(AdapterError, FileNotFoundError):
    """No adapter files at the given local path or Hub id (or the named adapter is not loaded)."""


class AdapterLoadError(AdapterError, ValueError):
    """The adapter files exist but cannot be applied to this base model."""


class AdapterCapacityError(AdapterLoadError):
    """A `MultiAdapterModel` has no room for one more adapter: every slot is taken, or a layer's device pool
    (its share of `adapter_memory_bytes`) has too few free pages. Remove an adapter and add it again; a
    server's adapter store does (it evicts the least recently used unleased adapter)."""


class AdapterShapeError(AdapterLoadError):
    """A tensor's shape does not fit the base module it targets (an adapter trained for another model)."""


class AdapterWeightsError(AdapterLoadError):
    """Weights are unreadable, non-finite (NaN/Inf), unexplained by the config, or in a refused format."""


class UnsafeFormatError(AdapterWeightsError):
    """A pickle file (`adapter_model.bin`) was offered without the explicit opt-in."""


class NoTargetModulesError(AdapterLoadError):
    """The config matched zero modules of the base model, or names a target the model lacks."""


class UnsupportedError(AdapterError, NotImplementedError):
    """A valid PEFT feature that Swapyard does not implement (say which and what to do instead)."""
