"""Exact conversion of a saved AdaLoRA adapter into a plain LoRA adapter (reference §7.3).

For every module with tensors `A (r_k, in)`, `E (r_k, 1)`, `B (out, r_k)`:
    lora_A ← A ⊙ E,  lora_B ← B,  r ← r_k,  lora_alpha ← r_k · s_eff,
    s_eff = (lora_alpha or r_k) / (init_r + 1e-5)          (the loaded model's scale; ranknum = init_r)
so `ΔW = s_eff · B · diag(E) · A` is unchanged. Per-module ranks and alphas go into `rank_pattern` /
`alpha_pattern` keyed by the escaped full HF path, and `target_modules` lists the full paths (which bypass
`layers_to_transform`). Modules whose kept rank is 0 contribute nothing and are dropped. Other tensors
(biases, modules_to_save) are carried over unchanged.
"""

from __future__ import annotations

import re

import torch

from ...errors import AdapterWeightsError
from ...peft_names import INJECTED_PREFIX
from ..lora.config import LoraConfig
from .config import AdaLoraConfig

_SUFFIXES = (".lora_A", ".lora_E", ".lora_B")


def adalora_to_lora(
    config: AdaLoraConfig, state: dict[str, torch.Tensor]
) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """(LoraConfig, PEFT-keyed LoRA state dict) equivalent to the AdaLoRA `config` + saved `state`."""
    modules = sorted({k[: -len(s)] for k in state for s in _SUFFIXES if k.endswith(s)})
    out: dict[str, torch.Tensor] = {
        k: v for k, v in state.items() if not any(k.endswith(s) for s in _SUFFIXES)
    }
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    targets: set[str] = set()
    for module in modules:
        try:
            a, e, b = (state[module + s] for s in _SUFFIXES)
        except KeyError as exc:
            raise AdapterWeightsError(
                f"{module}: AdaLoRA needs lora_A, lora_E and lora_B; {exc} is missing."
            ) from None
        r_k = a.shape[0]
        if r_k == 0:
            continue
        s_eff = (config.lora_alpha or r_k) / (config.init_r + 1e-5)
        path = module.removeprefix(INJECTED_PREFIX)
        targets.add(path)
        rank_pattern[re.escape(path)] = r_k
        alpha_pattern[re.escape(path)] = r_k * s_eff
        out[module + ".lora_A.weight"] = a * e  # E (r_k, 1) scales the rows of A
        out[module + ".lora_B.weight"] = b
    if not targets:
        raise AdapterWeightsError("the AdaLoRA adapter keeps rank 0 everywhere; it has no effect to convert.")
    some_rank = next(iter(rank_pattern.values()))
    lora = LoraConfig(
        task_type=config.task_type,
        base_model_name_or_path=config.base_model_name_or_path,
        revision=config.revision,
        inference_mode=True,
        r=some_rank,
        lora_alpha=alpha_pattern[next(iter(alpha_pattern))],
        target_modules=targets,
        fan_in_fan_out=config.fan_in_fan_out,
        bias=config.bias,
        modules_to_save=config.modules_to_save,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
    )
    return lora, out
