"""`IA3Config`: PEFT's IA³ config, field for field (reference §6.1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...config import AdapterConfig, PeftType
from ...errors import AdapterConfigError


@dataclass
class IA3Config(AdapterConfig):
    """IA³: learned vectors that rescale a layer's output (or, for feed-forward layers, its input)."""

    PEFT_TYPE: ClassVar[str] = PeftType.IA3
    REQUIRED_KEYS: ClassVar[tuple[str, ...]] = ("peft_type", "target_modules", "feedforward_modules")

    target_modules: set[str] | list[str] | str | None = None
    exclude_modules: set[str] | list[str] | str | None = None
    feedforward_modules: set[str] | list[str] | str | None = None
    fan_in_fan_out: bool = False
    modules_to_save: list[str] | None = None
    init_ia3_weights: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("target_modules", "exclude_modules", "feedforward_modules"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                setattr(self, name, set(value))
        targets, feedforward = self.target_modules, self.feedforward_modules
        if isinstance(targets, set) and isinstance(feedforward, set) and not feedforward <= targets:
            raise AdapterConfigError(
                f"`feedforward_modules` should be a subset of `target_modules`; {sorted(feedforward - targets)} "
                "are not targets. Add them to target_modules or drop them from feedforward_modules."
            )
