"""`AdaLoraConfig`: PEFT's AdaLoRA config (reference §7.1); extends `LoraConfig`.

At inference only `init_r`, `lora_alpha`, `rank_pattern`, `target_modules` and `fan_in_fan_out` matter. Its
`rank_pattern` maps `<HF path>.lora_E` to a boolean mask of length `init_r` (the kept singular triplets),
unlike LoRA's rank_pattern; `r` is ignored.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

from ...config import PeftType
from ...config_checks import MAX_ABS_ALPHA, MAX_RANK, MAX_STEPS, Number
from ...errors import AdapterConfigError
from ..lora.config import LoraConfig

_STEP = Number(int, 0, MAX_STEPS)
_BETA = Number(float, 0, 1, hint="AdaLoRA's EMA coefficients are in [0, 1] (default 0.85)")


@dataclass
class AdaLoraConfig(LoraConfig):
    PEFT_TYPE: ClassVar[str] = PeftType.ADALORA
    REQUIRED_KEYS: ClassVar[tuple[str, ...]] = ("peft_type", "init_r", "lora_alpha", "target_modules")
    NUMBERS: ClassVar[dict[str, Number]] = {
        "init_r": Number(int, 1, MAX_RANK, hint='set e.g. "init_r": 12 (the rank before pruning)'),
        "target_r": Number(int, 0, MAX_RANK),
        "tinit": _STEP,
        "tfinal": _STEP,
        "deltaT": Number(int, 1, MAX_STEPS),
        "beta1": _BETA,
        "beta2": _BETA,
        "orth_reg_weight": Number(float, 0, MAX_ABS_ALPHA),
        "total_step": Number(int, 1, MAX_STEPS, nullable=True),
    }

    rank_pattern: dict[str, Any] | None = None
    target_r: int = 8
    init_r: int = 12
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    total_step: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.use_dora:
            raise AdapterConfigError("AdaLoRA does not support DoRA; set use_dora=false.")
        if self.loftq_config:
            raise AdapterConfigError("AdaLoRA does not support LoftQ; drop loftq_config.")
        if self.r != 8:
            warnings.warn(
                "Note that `r` is not used in AdaLoRA and will be ignored; set the initial rank with `init_r`.",
                stacklevel=3,
            )
        # Older PEFT saved `total_step: null` for adapters that are only used for inference; it is the training
        # schedule, so it is required only to train (PEFT 0.21 refuses such files; PEFT 0.6 loaded them).
        inference_only = self.total_step is None and self.inference_mode
        if not inference_only and (self.total_step is None or self.total_step <= 0):
            raise AdapterConfigError(
                "AdaLoRA does not work when `total_step` is None; supply a value > 0 (the planned training steps)."
            )
        if self.total_step is not None and self.tinit >= (self.total_step - self.tfinal):
            raise AdapterConfigError(
                "The supplied schedule values don't allow for a budgeting phase. Decrease `tfinal`/`tinit` or "
                "increase `total_step`."
            )

    def _check_rank_pattern(self) -> None:
        """AdaLoRA's rank_pattern holds kept-rank masks (booleans), not ranks."""
        if self.rank_pattern is not None and not isinstance(self.rank_pattern, dict):
            raise AdapterConfigError(
                f"rank_pattern must be an object of boolean masks, got {self.rank_pattern!r}."
            )
        for key, mask in (self.rank_pattern or {}).items():
            if not isinstance(mask, list) or not all(isinstance(m, bool) for m in mask):
                raise AdapterConfigError(
                    f"rank_pattern[{key!r}] must be a list of booleans (AdaLoRA's kept-rank mask), got {mask!r}."
                )
