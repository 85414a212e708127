"""The adapter methods Swapyard implements: one `MethodSpec` per method, and the one table of them.

Each method declares its spec in its own package (`methods/<name>/spec.py`); `methods/__init__.py` lists
the specs, one line per method, and registers them when `adapters_core` is imported. Every consumer reads
this table and nothing else:

    config parsing          `get_method(peft_type).config_cls`      (AdapterConfig.from_dict)
    AdapterModel            `get_method(peft_type).tuner_cls`       (adapter_model.py, peft_api.py)
    MultiAdapterModel       `get_method(peft_type).serving`         (multi/parsed.py)
    the trainer             `train_method(name)`, `train_names()`   (`swapyard train --method NAME`)

So adding a method touches its own folder and one line of `methods/__init__.py`. Imports point one way,
registry <- config <- methods/* <- methods/__init__, so nothing here imports a method.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import AdapterConfigError

if TYPE_CHECKING:
    import torch

    from .config import AdapterConfig


class ServingForm(enum.Enum):
    """How MultiAdapterModel parses and serves a method's adapters in a mixed batch (multi/parsed.py)."""

    LORA = "lora"  # per-module low-rank deltas (+ DoRA magnitude, lora bias) through the kernels
    IA3 = "ia3"  # per-module scaling vectors
    PROMPT = "prompt"  # virtual tokens, prefixes, adaption prompts (multi/prompt_parse.py)
    UNSUPPORTED = "unsupported"  # AdapterModel only; MultiAdapterModel refuses it with UnsupportedError


@dataclass(frozen=True)
class TrainName:
    """One `swapyard train --method NAME`: the config `options` it implies and its default learning rate.

    Several names may share a method (`dora` is LoRA with `use_dora=True`); a value the user gives wins.
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    learning_rate: float = 2e-4  # a peak rate that works on small models when the user gives none


# AdaLoRA's exact conversion: (its config, its PEFT state) -> (a LoraConfig, LoRA-keyed state).
ToLora = Callable[
    ["AdapterConfig", dict[str, "torch.Tensor"]], tuple["AdapterConfig", dict[str, "torch.Tensor"]]
]


@dataclass(frozen=True)
class MethodSpec:
    """Everything Swapyard needs to know about one adapter method.

    peft_type: PEFT's `peft_type` string (adapter_config.json), equal to `config_cls.PEFT_TYPE`.
    config_cls: the AdapterConfig subclass that reads and writes its adapter_config.json.
    tuner_cls: its live form for AdapterModel, `tuner_cls(model, config, adapter_name)` (tuners/protocol.py).
    serving: how MultiAdapterModel serves it; `to_lora` converts a LORA-served method that is not plain LoRA.
    train_names: the names `swapyard train --method` accepts for it (none: not trainable from the CLI).
    """

    peft_type: str
    config_cls: type[AdapterConfig]
    tuner_cls: type
    serving: ServingForm
    train_names: tuple[TrainName, ...] = ()
    to_lora: ToLora | None = field(default=None, compare=False)

    @property
    def prompt_learning(self) -> bool:
        """Prompt tuning, P-tuning, prefix tuning: virtual tokens, no injected layers (the config says)."""
        return bool(self.config_cls.PROMPT_LEARNING)


_METHODS: dict[str, MethodSpec] = {}


def peft_type_name(peft_type: Any) -> str:
    """`PeftType.LORA` or `"LORA"` -> `"LORA"`."""
    return str(getattr(peft_type, "value", peft_type))


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add `spec` to the table. A spec that contradicts itself, or clashes with one already registered
    (same peft_type, or a train name taken), is a programming error: `ValueError`."""
    name = peft_type_name(spec.peft_type)
    declared = peft_type_name(getattr(spec.config_cls, "PEFT_TYPE", None))
    if declared != name:
        raise ValueError(f"MethodSpec {name}: {spec.config_cls.__name__}.PEFT_TYPE is {declared!r}.")
    if spec.prompt_learning and spec.serving not in (ServingForm.PROMPT, ServingForm.UNSUPPORTED):
        raise ValueError(f"MethodSpec {name}: a prompt-learning config cannot be served as {spec.serving}.")
    if spec.to_lora is not None and spec.serving is not ServingForm.LORA:
        raise ValueError(f"MethodSpec {name}: to_lora is only meaningful for ServingForm.LORA.")
    if name in _METHODS and _METHODS[name] != spec:
        raise ValueError(f"peft_type {name!r} is already registered by {_METHODS[name].config_cls.__name__}.")
    taken = {t.name for s in _METHODS.values() if s.peft_type != name for t in s.train_names}
    clash = sorted(taken & {t.name for t in spec.train_names})
    if clash:
        raise ValueError(f"MethodSpec {name}: train name(s) {clash} already belong to another method.")
    _METHODS[name] = spec
    return spec


def unregister_method(peft_type: Any) -> None:
    """Remove a method (tests and plugins that registered one for a while)."""
    _METHODS.pop(peft_type_name(peft_type), None)


def registered_methods() -> tuple[MethodSpec, ...]:
    """Every registered spec, in registration order."""
    return tuple(_METHODS.values())


def get_method(peft_type: Any, *, source: str = "config") -> MethodSpec:
    """The spec of a peft_type; `AdapterConfigError` naming the implemented ones for any other."""
    name = peft_type_name(peft_type)
    try:
        return _METHODS[name]
    except KeyError:
        raise AdapterConfigError(
            f"{source}: unknown or unsupported peft_type {name!r}; Swapyard supports {sorted(_METHODS)}."
        ) from None


def train_names() -> tuple[str, ...]:
    """The names `swapyard train --method` accepts, in registration order."""
    return tuple(t.name for spec in _METHODS.values() for t in spec.train_names)


def train_method(name: str) -> tuple[MethodSpec, TrainName]:
    """The spec and train name of `--method NAME`; `KeyError` for a name no method declares."""
    for spec in _METHODS.values():
        for train_name in spec.train_names:
            if train_name.name == name:
                return spec, train_name
    raise KeyError(name)
