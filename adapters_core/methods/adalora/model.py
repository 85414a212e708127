"""The AdaLoRA tuner (PEFT's `AdaLoraModel`), inference and save/load only: no budget allocator."""

from __future__ import annotations

import torch
from torch import nn

from ...config import PeftType
from ...errors import AdapterConfigError, UnsupportedError
from ...registry import MethodSpec, register_method
from ...targeting import LORA_DEFAULT_TARGETS
from ...tuners.injection import InjectionTuner
from ...tuners.layer import TunerLayer, is_conv1d
from .config import AdaLoraConfig
from .layer import SVDLinear


def _module_of_mask_key(mask_key: str, adapter_name: str) -> str:
    """`model.layers.0.self_attn.q_proj.lora_E[.default]` → `model.layers.0.self_attn.q_proj` (PEFT's rule)."""
    parts = mask_key.split(".")
    return ".".join(parts[:-2]) if adapter_name in mask_key else ".".join(parts[:-1])


class AdaLoraTuner(InjectionTuner):
    default_targets = LORA_DEFAULT_TARGETS

    def create_layer(self, target: nn.Module, config, adapter_name: str, key: str) -> TunerLayer:  # type: ignore[override]
        if not (isinstance(target, nn.Linear) or is_conv1d(target)):
            raise UnsupportedError(
                f"{key}: AdaLoRA cannot target a {type(target).__name__}; Swapyard supports nn.Linear and Conv1D."
            )
        if config.fan_in_fan_out != is_conv1d(target):
            config.fan_in_fan_out = is_conv1d(target)
        return SVDLinear(
            target, adapter_name, config.init_r, config.lora_alpha, bool(config.init_lora_weights)
        )

    def update_layer(self, layer: TunerLayer, config, adapter_name: str, key: str) -> None:  # type: ignore[override]
        if not isinstance(layer, SVDLinear):
            raise UnsupportedError(f"{key}: already adapted by another method ({type(layer).__name__}).")
        layer.update_layer(adapter_name, config.init_r, config.lora_alpha, bool(config.init_lora_weights))

    def _masks(self, adapter_name: str) -> dict[str, list[bool]]:
        """Module path → kept-rank mask, from the config's rank_pattern (reference §7.1)."""
        config = self.peft_config[adapter_name]
        assert isinstance(config, AdaLoraConfig)
        return {_module_of_mask_key(k, adapter_name): v for k, v in (config.rank_pattern or {}).items()}

    def _layer(self, module_path: str, adapter_name: str) -> SVDLinear:
        try:
            layer = self.model.get_submodule(module_path)
        except AttributeError:
            layer = None
        if not isinstance(layer, SVDLinear) or adapter_name not in layer.lora_A:
            raise AdapterConfigError(
                f"rank_pattern names {module_path!r}, which this AdaLoRA adapter does not target; the config "
                "belongs to another model or its target_modules were edited."
            )
        return layer

    def postprocess_saved_state(
        self, state: dict[str, torch.Tensor], adapter_name: str
    ) -> dict[str, torch.Tensor]:
        """Drop the rank triplets the allocator masked out (PEFT's `resize_state_dict_by_rank_pattern`)."""
        for module_path, mask in self._masks(adapter_name).items():
            index = torch.tensor(mask, dtype=torch.bool)
            rank = int(index.sum())
            for name in ("lora_E", "lora_A", "lora_B"):
                key = f"{module_path}.{name}.{adapter_name}"
                tensor = state[key]
                if name == "lora_B":
                    state[key] = tensor[:, index] if tensor.shape[1] != rank else tensor
                else:
                    state[key] = tensor[index] if tensor.shape[0] != rank else tensor
        return state

    def before_load(self, adapter_name: str, state: dict[str, torch.Tensor]) -> None:
        """Re-create masked layers at their kept rank; `ranknum` stays `init_r` (PEFT's load-time subtlety)."""
        config = self.peft_config[adapter_name]
        assert isinstance(config, AdaLoraConfig)
        for module_path, mask in self._masks(adapter_name).items():
            layer = self._layer(module_path, adapter_name)
            current = layer.r[adapter_name]
            if len(mask) != current:
                raise AdapterConfigError(
                    f"{module_path}: rank_pattern mask has {len(mask)} entries but init_r is {current}; the "
                    "config is inconsistent."
                )
            rank = sum(mask)
            if rank == current:
                continue
            ranknum = float(layer.ranknum[adapter_name].item())
            layer.update_layer(
                adapter_name, rank, config.lora_alpha, True, ranknum=ranknum if rank > 0 else 0.0
            )
        self._refresh_active()


register_method(MethodSpec(peft_type=PeftType.ADALORA, config_cls=AdaLoraConfig, tuner_cls=AdaLoraTuner))
