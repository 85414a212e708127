"""`add_weighted_adapter` for LoRA: combine adapters into a new one (reference §5.7).

Per module, only the adapters present there take part. The new adapter has `r_new`, `lora_alpha = r_new`
(scaling 1) and no rank/alpha patterns; its target_modules are the union of the inputs'.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import torch

from ...errors import AdapterConfigError, AdapterNotFoundError, UnsupportedError
from ...tuners.modules_to_save import ModulesToSaveWrapper
from .layer import LoraLayer

if TYPE_CHECKING:
    from .model import LoraTuner


def _factors(layer: LoraLayer, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(A (r, in), B (out, r)) of adapter `name` in this layer, Linear or Embedding; None if absent."""
    if name in layer.lora_A:
        return layer.lora_A[name].weight, layer.lora_B[name].weight
    if name in layer.lora_embedding_A:
        return layer.lora_embedding_A[name], layer.lora_embedding_B[name]
    return None


def _new_rank_and_targets(tuner: LoraTuner, adapters: list[str], combination_type: str, svd_rank: int | None):
    configs: list[Any] = [tuner.peft_config[a] for a in adapters]
    ranks = [c.r if not c.rank_pattern else max(c.r, *c.rank_pattern.values()) for c in configs]
    if combination_type == "linear":
        if len(set(ranks)) != 1:
            raise AdapterConfigError(
                f"combination_type='linear' needs adapters of equal r, got {dict(zip(adapters, ranks))}; use 'cat' "
                "or 'svd'."
            )
        new_rank = ranks[0]
    elif combination_type == "cat":
        new_rank = sum(ranks)
    elif combination_type == "svd":
        new_rank = svd_rank or max(ranks)
    else:
        raise UnsupportedError(
            f"combination_type {combination_type!r} is not implemented; Swapyard supports 'linear', 'cat' and 'svd'."
        )
    kinds = {type(c.target_modules) for c in configs}
    if len(kinds) > 1:
        raise AdapterConfigError("cannot combine adapters whose target_modules mix lists and regex strings.")
    if isinstance(configs[0].target_modules, str):
        targets: object = "|".join(f"({c.target_modules})" for c in configs)
    else:
        targets = set().union(*(c.target_modules for c in configs))
    return new_rank, targets


def add_weighted_lora_adapter(
    tuner: LoraTuner,
    adapters: list[str],
    weights: list[float],
    adapter_name: str,
    combination_type: str = "svd",
    svd_rank: int | None = None,
    svd_clamp: float | None = None,
    svd_full_matrices: bool = True,
    svd_driver: str | None = None,
) -> None:
    for a in adapters:
        if a not in tuner.peft_config:
            raise AdapterNotFoundError(f"no adapter named {a!r}; loaded: {sorted(tuner.peft_config)}.")
        if getattr(tuner.peft_config[a], "use_dora", False):
            raise UnsupportedError(f"add_weighted_adapter cannot combine DoRA adapters ({a!r} uses DoRA).")
    if len(adapters) != len(weights):
        raise AdapterConfigError(f"got {len(adapters)} adapters but {len(weights)} weights.")
    if adapter_name in tuner.peft_config:
        raise AdapterConfigError(f"an adapter named {adapter_name!r} already exists; pick another name.")
    for _, wrapper in tuner.wrappers():
        if sum(a in wrapper.modules_to_save for a in adapters) > 1:
            raise AdapterConfigError(
                "cannot combine adapters that each bring their own modules_to_save copy of the same module."
            )
    combination_type = "linear" if len(adapters) == 1 else combination_type
    new_rank, targets = _new_rank_and_targets(tuner, adapters, combination_type, svd_rank)
    base_config: Any = tuner.peft_config[adapters[0]]
    config = dataclasses.replace(
        base_config,
        r=new_rank,
        lora_alpha=new_rank,
        target_modules=targets,
        alpha_pattern={},
        rank_pattern={},
    )
    tuner.add_adapter(adapter_name, config)

    with torch.no_grad():
        for _, layer in tuner.tuner_layers():
            if not isinstance(layer, LoraLayer) or isinstance(layer, ModulesToSaveWrapper):
                continue
            target = _factors(layer, adapter_name)
            if target is None:
                continue
            new_a, new_b = target
            present = [(a, w) for a, w in zip(adapters, weights) if _factors(layer, a) is not None]
            if not present:
                raise AdapterConfigError(
                    f"no adapter of {adapters} adapts a module that {adapter_name!r} targets."
                )
            new_a.zero_()
            new_b.zero_()
            if combination_type == "cat":
                a_parts = [_factors(layer, a)[0] * w * layer.scaling[a] for a, w in present]  # type: ignore[index]
                b_parts = [_factors(layer, a)[1] for a, _ in present]  # type: ignore[index]
                cat_a, cat_b = torch.cat(a_parts, dim=0), torch.cat(b_parts, dim=1)
                new_a[: cat_a.shape[0], :] = cat_a
                new_b[:, : cat_b.shape[1]] = cat_b
            elif combination_type == "linear":
                a_sum = torch.zeros_like(new_a)
                b_sum = torch.zeros_like(new_b)
                for a, w in present:
                    s = w * layer.scaling[a]
                    fa, fb = _factors(layer, a)  # type: ignore[misc]
                    a_sum += math.copysign(math.sqrt(abs(s)), s if s != 0 else 1.0) * fa
                    b_sum += math.sqrt(abs(s)) * fb
                new_a.copy_(a_sum)
                new_b.copy_(b_sum)
            else:  # svd of Σ w_i ΔW_i, in (out, in) layout
                delta = torch.stack([w * layer.get_delta_weight(a) for a, w in present]).sum(dim=0)
                if getattr(layer, "fan_in_fan_out", False):
                    delta = delta.T
                u, s, vh = torch.linalg.svd(delta, full_matrices=svd_full_matrices, driver=svd_driver)
                b, a = u[:, :new_rank] @ torch.diag(s[:new_rank]), vh[:new_rank, :]
                if (
                    svd_clamp is not None
                ):  # PEFT: clip both factors to the `svd_clamp` quantile of their values
                    high = torch.quantile(torch.cat([b.flatten(), a.flatten()]), svd_clamp)
                    b, a = b.clamp(-high, high), a.clamp(-high, high)
                new_b.copy_(b)
                new_a.copy_(a)
