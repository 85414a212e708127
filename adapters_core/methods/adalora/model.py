"""The AdaLoRA tuner (PEFT's `AdaLoraModel`): SVD layers, save/load by rank pattern, and for a trainable
adapter the rank-budget allocator and the orthogonality regulariser (`allocator.py`).

Training loop, as PEFT's:
    loss = model(**batch, labels=labels).loss         # includes orth_reg_weight · orthogonality term
    loss.backward(); optimizer.step()
    model.base_model.update_and_allocate(step)         # reads the gradients: before zero_grad()
    optimizer.zero_grad()
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import AdapterConfigError, UnsupportedError
from ...targeting import ADALORA_DEFAULT_TARGETS
from ...tuners.injection import InjectionTuner
from ...tuners.layer import TunerLayer, is_conv1d
from .allocator import RankAllocator, orthogonal_regularization
from .config import AdaLoraConfig
from .layer import SVDLinear


def _module_of_mask_key(mask_key: str, adapter_name: str) -> str:
    """`model.layers.0.self_attn.q_proj.lora_E[.default]` → `model.layers.0.self_attn.q_proj` (PEFT's rule)."""
    parts = mask_key.split(".")
    return ".".join(parts[:-2]) if adapter_name in mask_key else ".".join(parts[:-1])


class AdaLoraTuner(InjectionTuner):
    default_targets = ADALORA_DEFAULT_TARGETS

    def __init__(self, model: nn.Module, config: AdaLoraConfig, adapter_name: str = "default") -> None:
        super().__init__(model, config, adapter_name)
        self.trainable_adapter_name: str | None = None
        self.rankallocator: RankAllocator | None = None
        live = self.peft_config[adapter_name]
        assert isinstance(live, AdaLoraConfig)
        if not live.inference_mode:  # PEFT builds the allocator for the adapter it was created with
            self.trainable_adapter_name = adapter_name
            self.rankallocator = RankAllocator(self.model, live, adapter_name)

    # -- training (PEFT's AdaLoraModel.forward / update_and_allocate) ---------------------------
    def orthogonal_loss(self) -> torch.Tensor | None:
        """`orth_reg_weight · mean ‖PPᵀ − I‖_F, ‖QᵀQ − I‖_F` of the trainable adapter (None if none)."""
        if self.trainable_adapter_name is None:
            return None
        config = self.peft_config[self.trainable_adapter_name]
        assert isinstance(config, AdaLoraConfig)
        reg = orthogonal_regularization(self.model, self.trainable_adapter_name)
        return None if reg is None else config.orth_reg_weight * reg

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The model's forward; with a trainable adapter and a loss, the orthogonality term is added to it."""
        outputs = self.model(*args, **kwargs)
        loss = getattr(outputs, "loss", None)
        if isinstance(loss, torch.Tensor):
            reg = self.orthogonal_loss()
            if reg is not None:
                outputs.loss = loss + reg
        return outputs

    def update_and_allocate(self, global_step: int) -> None:
        """Update importance, mask to the step's budget and record `rank_pattern` (PEFT's schedule).

        Call after every `optimizer.step()` and before `zero_grad()`. Before `total_step - tfinal`: EMAs and
        masking on the cubic schedule; at it: the final mask (rank_pattern fixed, EMAs dropped); after it:
        the final mask is re-applied so masked singular values stay zero.
        """
        allocator, name = self.rankallocator, self.trainable_adapter_name
        if allocator is None or name is None:
            raise UnsupportedError(
                "update_and_allocate() needs a trainable AdaLoRA adapter; this one was loaded for inference "
                "(load it with is_trainable=True)."
            )
        config = self.peft_config[name]
        assert isinstance(config, AdaLoraConfig) and config.total_step is not None
        final_step = config.total_step - config.tfinal
        if global_step < final_step:
            _, rank_pattern = allocator.update_and_allocate(self.model, global_step)
            if rank_pattern:
                config.rank_pattern = rank_pattern
        elif global_step == final_step:
            _, rank_pattern = allocator.update_and_allocate(self.model, global_step, force_mask=True)
            config.rank_pattern = rank_pattern
            allocator.reset_ipt()
        elif config.rank_pattern:
            allocator.mask_using_rank_pattern(self.model, config.rank_pattern)

    def create_layer(self, target: nn.Module, config, adapter_name: str, key: str) -> TunerLayer:
        if not (isinstance(target, nn.Linear) or is_conv1d(target)):
            raise UnsupportedError(
                f"{key}: AdaLoRA cannot target a {type(target).__name__}; Swapyard supports nn.Linear and Conv1D."
            )
        if config.fan_in_fan_out != is_conv1d(target):
            config.fan_in_fan_out = is_conv1d(target)
        return SVDLinear(
            target, adapter_name, config.init_r, config.lora_alpha, bool(config.init_lora_weights)
        )

    def update_layer(self, layer: TunerLayer, config, adapter_name: str, key: str) -> None:
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
        """Drop the rank triplets the allocator masked out (PEFT's `resize_state_dict_by_rank_pattern`).

        Like PEFT, the config's rank_pattern keys lose the adapter name here, so they are saved without it.
        """
        config = self.peft_config[adapter_name]
        assert isinstance(config, AdaLoraConfig)
        if config.rank_pattern is not None:
            config.rank_pattern = {
                k.replace(f".{adapter_name}", ""): v for k, v in config.rank_pattern.items()
            }
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
