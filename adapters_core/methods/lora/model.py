"""The LoRA tuner: injects `Linear`/`Embedding` LoRA layers (PEFT's `LoraModel`)."""

from __future__ import annotations

import warnings

from torch import nn

from ...errors import UnsupportedError
from ...targeting import LORA_DEFAULT_TARGETS, get_pattern_key
from ...tuners.injection import InjectionTuner
from ...tuners.layer import CONV_TYPES, TunerLayer, is_conv1d
from .config import LoraConfig
from .conv import Conv
from .embedding import Embedding
from .layer import Linear, LoraLayer
from .weighted import add_weighted_lora_adapter


def rank_and_alpha(config: LoraConfig, key: str) -> tuple[int, float]:
    """The module's `r` and `lora_alpha` after `rank_pattern`/`alpha_pattern` (reference §5.3)."""
    rank_pattern = config.rank_pattern or {}
    alpha_pattern = config.alpha_pattern or {}
    key_r = get_pattern_key(rank_pattern.keys(), key)
    key_a = get_pattern_key(alpha_pattern.keys(), key)
    r = rank_pattern[key_r] if key_r is not None else config.r
    alpha = alpha_pattern[key_a] if key_a is not None else config.lora_alpha
    return int(r), alpha


class LoraTuner(InjectionTuner):
    """LoRA (and DoRA, rsLoRA) adapters over a transformers model."""

    default_targets = LORA_DEFAULT_TARGETS

    def create_layer(self, target: nn.Module, config, adapter_name: str, key: str) -> TunerLayer:
        r, alpha = rank_and_alpha(config, key)
        if isinstance(target, nn.Embedding):
            return Embedding(target, adapter_name, config, r, alpha)
        if isinstance(target, CONV_TYPES):
            return Conv(target, adapter_name, config, r, alpha)
        if isinstance(target, nn.Linear) or is_conv1d(target):
            conv1d = is_conv1d(target)
            if config.fan_in_fan_out != conv1d:
                # PEFT corrects the flag to the layer type, in the config too (so the saved file says so)
                warnings.warn(
                    f"{key}: fan_in_fan_out={config.fan_in_fan_out} does not fit a {type(target).__name__}; "
                    f"using {conv1d}.",
                    stacklevel=2,
                )
                config.fan_in_fan_out = conv1d
            return Linear(target, adapter_name, config, r, alpha)
        raise UnsupportedError(
            f"{key}: LoRA cannot target a {type(target).__name__}; Swapyard supports nn.Linear, Conv1D, "
            "nn.Embedding and nn.Conv1d/2d/3d. Narrow target_modules."
        )

    def update_layer(self, layer: TunerLayer, config, adapter_name: str, key: str) -> None:
        if not isinstance(layer, LoraLayer):
            raise UnsupportedError(f"{key}: already adapted by another method ({type(layer).__name__}).")
        r, alpha = rank_and_alpha(config, key)
        layer.update_layer(adapter_name, r, alpha, config)

    def checkpoint_key(self, live_key: str, adapter_name: str) -> str:
        """DoRA's magnitude is saved as `…lora_magnitude_vector`, without the live `.default.weight`."""
        if live_key.endswith(f"lora_magnitude_vector.{adapter_name}.weight"):
            live_key = live_key.removesuffix(".weight")
        return super().checkpoint_key(live_key, adapter_name)

    def add_weighted_adapter(
        self,
        adapters: list[str],
        weights: list[float],
        adapter_name: str,
        combination_type: str = "svd",
        svd_rank: int | None = None,
        svd_clamp: float | None = None,
        svd_full_matrices: bool = True,
        svd_driver: str | None = None,
        density: float | None = None,
        majority_sign_method: str = "total",
    ) -> None:
        """A new adapter combining `adapters` (reference §5.7): "linear", "cat" or "svd"; not activated.

        The `svd_*` options are PEFT's (`torch.linalg.svd`'s `full_matrices`/`driver`, and a quantile clamp of
        the factors). `density`/`majority_sign_method` belong to PEFT's TIES/DARE/magnitude-prune combinations,
        which Swapyard does not implement: passing them is an error, not a silent no-op.
        """
        if density is not None or majority_sign_method != "total":
            raise UnsupportedError(
                "density/majority_sign_method apply to PEFT's ties/dare/magnitude_prune combinations, which Swapyard "
                "does not implement; use combination_type 'linear', 'cat' or 'svd' without them."
            )
        add_weighted_lora_adapter(
            self,
            adapters,
            weights,
            adapter_name,
            combination_type,
            svd_rank,
            svd_clamp=svd_clamp,
            svd_full_matrices=svd_full_matrices,
            svd_driver=svd_driver,
        )
