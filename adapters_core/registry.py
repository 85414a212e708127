"""`peft_type` → method: the one place that lists the adapter methods.

Adding a method touches its own package under `adapters_core/methods/` and one line in
`adapters_core/methods/__init__.py` (which imports it, and the import registers it here).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import AdapterConfig, PeftType, _load_builtin_methods
from .errors import AdapterConfigError


@dataclass(frozen=True)
class MethodSpec:
    """How to build one method's live form. `tuner_cls(model, config, adapter_name)` (tuners/protocol.py)."""

    peft_type: PeftType
    config_cls: type[AdapterConfig]
    tuner_cls: type
    prompt_learning: bool = False


_METHODS: dict[PeftType, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    _METHODS[spec.peft_type] = spec
    return spec


def get_method(peft_type: PeftType | str) -> MethodSpec:
    """The `MethodSpec` of a peft_type; `AdapterConfigError` for one Swapyard does not implement."""
    if not _METHODS:
        _load_builtin_methods()
    key = PeftType(getattr(peft_type, "value", peft_type))
    if key not in _METHODS:
        _load_builtin_methods()
    try:
        return _METHODS[key]
    except KeyError:
        raise AdapterConfigError(
            f"peft_type {key.value!r} is not implemented; available: {sorted(m.value for m in _METHODS)}."
        ) from None
