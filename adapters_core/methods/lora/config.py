"""`LoraConfig`: PEFT's LoRA config, field for field (reference §5.1).

Every field PEFT 0.21 writes is accepted so its files load unchanged. Fields that switch LoRA into a variant
Swapyard does not implement (aLoRA, BD-LoRA, Arrow, VeLoRA, MonteCLoRA, KaSA, QALoRA, MiCA, layer
replication, parameter targeting, trainable tokens) are rejected with `UnsupportedError` naming the field:
serving such an adapter as plain LoRA would give silently wrong outputs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...config import AdapterConfig, PeftType
from ...config_checks import MAX_ABS_ALPHA, MAX_LAYERS, MAX_RANK, Number, check_number, check_number_map
from ...errors import AdapterConfigError, UnsupportedError

# init_lora_weights values that rewrite the *base* weights when the adapter is created (reference §5.8).
_BASE_MUTATING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")

RANK = Number(int, 1, MAX_RANK, hint='set e.g. "r": 8 (the rank the adapter was trained with)')
ALPHA = Number(
    float, abs_high=MAX_ABS_ALPHA, hint='set e.g. "lora_alpha": 16 (the LoRA scale is lora_alpha / r)'
)
LAYER_INDEX = Number(int, 0, MAX_LAYERS, hint="layers_to_transform lists transformer layer indices")


@dataclass
class LoraConfig(AdapterConfig):
    """LoRA: `y = W x + scaling · B A x`, `scaling = lora_alpha / r` (or `/ sqrt(r)` with rsLoRA)."""

    PEFT_TYPE: ClassVar[str] = PeftType.LORA
    REQUIRED_KEYS: ClassVar[tuple[str, ...]] = ("peft_type", "r", "lora_alpha", "target_modules")
    NUMBERS: ClassVar[dict[str, Number]] = {
        "r": RANK,
        "lora_alpha": ALPHA,
        "lora_dropout": Number(float, 0, 1, high_open=True, hint='set e.g. "lora_dropout": 0.05'),
        "qalora_group_size": Number(int, 1, MAX_RANK),
    }

    r: int = 8
    target_modules: set[str] | list[str] | str | None = None
    exclude_modules: set[str] | list[str] | str | None = None
    lora_alpha: int | float = 8
    lora_dropout: float = 0.0
    fan_in_fan_out: bool = False
    bias: str = "none"
    use_rslora: bool = False
    modules_to_save: list[str] | None = None
    init_lora_weights: bool | str = True
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    rank_pattern: dict[str, Any] | None = field(default_factory=dict)
    alpha_pattern: dict[str, Any] | None = field(default_factory=dict)
    megatron_config: dict[str, Any] | None = None
    megatron_core: str | None = "megatron.core"
    trainable_token_indices: list[int] | dict[str, list[int]] | None = None
    loftq_config: dict[str, Any] = field(default_factory=dict)
    eva_config: dict[str, Any] | None = None
    corda_config: dict[str, Any] | None = None
    lora_ga_config: dict[str, Any] | None = None
    use_dora: bool = False
    velora_config: dict[str, Any] | None = None
    alora_invocation_tokens: list[int] | None = None
    use_qalora: bool = False
    qalora_group_size: int = 16
    monteclora_config: dict[str, Any] | None = None
    layer_replication: list[Any] | None = None
    lora_bias: bool = False
    target_parameters: list[str] | None = None
    use_bdlora: dict[str, Any] | None = None
    arrow_config: dict[str, Any] | None = None
    kasa_config: dict[str, Any] | None = None
    ensure_weight_tying: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.target_modules, (list, tuple)):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, (list, tuple)):
            self.exclude_modules = set(self.exclude_modules)
        self._reject_variants()
        self._validate()

    def _reject_variants(self) -> None:
        switches = {
            "alora_invocation_tokens": self.alora_invocation_tokens is not None,
            "use_bdlora": self.use_bdlora is not None,
            "arrow_config": self.arrow_config is not None,
            "velora_config": self.velora_config is not None,
            "monteclora_config": self.monteclora_config is not None,
            "kasa_config": self.kasa_config is not None,
            "use_qalora": bool(self.use_qalora),
            "layer_replication": self.layer_replication is not None,
            "target_parameters": bool(self.target_parameters),
            "trainable_token_indices": self.trainable_token_indices is not None,
        }
        for name, on in switches.items():
            if on:
                raise UnsupportedError(
                    f"{name}={getattr(self, name)!r} selects a LoRA variant Swapyard does not implement; serving it "
                    f"as plain LoRA would give wrong outputs. Use a plain LoRA/DoRA adapter ({name} null/false)."
                )
        if isinstance(self.init_lora_weights, str) and self.init_lora_weights.lower() == "mica":
            raise UnsupportedError(
                "init_lora_weights='mica' selects the MiCA LoRA variant, which Swapyard does not implement; "
                "use a plain LoRA adapter."
            )

    def _check_rank_pattern(self) -> None:
        """LoRA's rank_pattern: per-module r under r's rule (AdaLoRA's holds masks instead)."""
        check_number_map("rank_pattern", self.rank_pattern, RANK)

    def _check_patterns(self) -> None:
        """Per-module ranks and alphas under the rules of r and lora_alpha; layer indices >= 0."""
        self._check_rank_pattern()
        check_number_map("alpha_pattern", self.alpha_pattern, ALPHA)
        layers = self.layers_to_transform
        for index in layers if isinstance(layers, list) else [] if layers is None else [layers]:
            check_number("layers_to_transform", index, LAYER_INDEX)

    def _validate(self) -> None:
        self._check_patterns()
        if not isinstance(self.init_lora_weights, (bool, str)):
            raise AdapterConfigError(
                f"init_lora_weights must be true, false or an init name such as 'gaussian', got "
                f"{self.init_lora_weights!r}."
            )
        if self.bias not in ("none", "all", "lora_only"):
            raise AdapterConfigError(f"bias must be 'none', 'all' or 'lora_only', got {self.bias!r}.")
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise AdapterConfigError(
                "`layers_to_transform` cannot be used when `target_modules` is a str (a regex); put the layer "
                "indices into the regex, or give target_modules as a list."
            )
        if isinstance(self.target_modules, str) and self.layers_pattern is not None:
            raise AdapterConfigError(
                "`layers_pattern` cannot be used when `target_modules` is a str (a regex); give target_modules "
                "as a list, or drop layers_pattern."
            )
        if self.layers_pattern and self.layers_to_transform is None:
            raise AdapterConfigError(
                "When `layers_pattern` is specified, `layers_to_transform` must also be specified."
            )
        if self.lora_bias:
            if self.init_lora_weights not in (True, False):
                raise AdapterConfigError(
                    "lora_bias=True is only supported with init_lora_weights=True or False, got "
                    f"{self.init_lora_weights!r}."
                )
            if self.use_dora:
                raise AdapterConfigError("lora_bias=True is not supported with DoRA; set use_dora=false.")
        init = self.init_lora_weights
        if isinstance(init, str) and init.lower().startswith(_BASE_MUTATING_INITS):
            warnings.warn(
                f"init_lora_weights={init!r} changes the base weights when an adapter is created; a file saved "
                "without PEFT's `path_initial_model_for_weight_conversion` only reproduces its outputs on that "
                "mutated base. Swapyard creates new adapters with the default LoRA init.",
                stacklevel=3,
            )
