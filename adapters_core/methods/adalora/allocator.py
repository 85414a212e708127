"""AdaLoRA's training-time machinery, exactly as PEFT 0.21.2 (`adalora/layer.py::RankAllocator`).

Every tensor is keyed by its parameter name in the transformers model, e.g.
`model.layers.0.self_attn.q_proj.lora_A.default`. For a module with `init_r = r`:
`lora_A (r, in)`, `lora_E (r, 1)`, `lora_B (out, r)`.

Semantics, per step (called after `optimizer.step()`, before `zero_grad()`):
    I      = |p ⊙ ∇p|                                    sensitivity of every entry of A, E, B
    Ī     ← β1·Ī + (1-β1)·I                              smoothed sensitivity   (exp_avg_ipt)
    U     ← β2·U + (1-β2)·|I - Ī|                        uncertainty            (exp_avg_unc)
    s      = Ī ⊙ U                                        entry score
    S_i    = s_E[i] + mean_j s_A[i, j] + mean_k s_B[k, i]  score of singular triplet i   (r,)
Budget b(t) (triplets kept over all modules), T = total_step:
    t <= tinit:                  b = init_bgt (= Σ init_r), no masking
    tinit < t <= T - tfinal:     b = int((init_bgt - target_bgt)·(1 - (t-tinit)/(T-tfinal-tinit))³ + target_bgt),
                                 masking when t % deltaT == 0
    t > T - tfinal:              b = target_bgt (= target_r · number of modules)
Masking zeroes E[i] for every triplet with S_i <= the (init_bgt - b)-th smallest score over all modules and
records the kept triplets as `rank_pattern[<name of lora_E>] = [bool] * r`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import AdaLoraConfig

_SCORES = ("ipt", "exp_avg_ipt", "exp_avg_unc")


class RankAllocator:
    """Importance EMAs and the cubic budget schedule of one trainable AdaLoRA adapter (PEFT's class).

    `config` is the adapter's live config (shared with the tuner): `total_step` is read from it each call
    and `rank_pattern` is written there by the tuner.
    """

    def __init__(self, model: nn.Module, config: AdaLoraConfig, adapter_name: str) -> None:
        if not (0 < config.beta1 < 1 and 0 < config.beta2 < 1):
            raise ValueError(f"beta1 and beta2 must be in (0, 1), got {config.beta1}, {config.beta2}.")
        self.peft_config = config
        self.adapter_name = adapter_name
        self.beta1 = config.beta1
        self.beta2 = config.beta2
        self.reset_ipt()
        self._set_budget_scheduler(model)

    def set_total_step(self, total_step: int) -> None:
        self.peft_config.total_step = total_step

    def reset_ipt(self) -> None:
        self.ipt: dict[str, torch.Tensor] = {}
        self.exp_avg_ipt: dict[str, torch.Tensor] = {}
        self.exp_avg_unc: dict[str, torch.Tensor] = {}

    def _set_budget_scheduler(self, model: nn.Module) -> None:
        self.init_bgt = 0
        names: set[str] = set()
        for n, p in model.named_parameters():
            if f"lora_A.{self.adapter_name}" in n:
                self.init_bgt += p.size(0)
                names.add(n.replace("lora_A", "%s"))
        self.name_set = sorted(names)
        self.target_bgt = self.peft_config.target_r * len(self.name_set)

    def budget_schedule(self, step: int) -> tuple[int, bool]:
        """(budget in triplets, whether to mask at this step)."""
        tinit, tfinal = self.peft_config.tinit, self.peft_config.tfinal
        total_step = self.peft_config.total_step
        assert total_step is not None  # the config validates it
        if step <= tinit:
            return self.init_bgt, False
        if step > total_step - tfinal:
            return self.target_bgt, True
        mul_coeff = 1 - (step - tinit) / (total_step - tfinal - tinit)
        budget = int((self.init_bgt - self.target_bgt) * (mul_coeff**3) + self.target_bgt)
        return budget, step % self.peft_config.deltaT == 0

    @torch.no_grad()
    def update_ipt(self, model: nn.Module) -> None:
        """Fold this step's |p ⊙ grad| into the sensitivity and uncertainty EMAs."""
        for n, p in model.named_parameters():
            if "lora_" not in n or self.adapter_name not in n:
                continue
            if n not in self.ipt:
                self.ipt[n] = torch.zeros_like(p)
                self.exp_avg_ipt[n] = torch.zeros_like(p)
                self.exp_avg_unc[n] = torch.zeros_like(p)
            if p.grad is None:
                raise RuntimeError(
                    f"{n} has no gradient: call update_and_allocate() after backward() and before zero_grad()."
                )
            self.ipt[n] = (p * p.grad).abs().detach()
            self.exp_avg_ipt[n] = self.beta1 * self.exp_avg_ipt[n] + (1 - self.beta1) * self.ipt[n]
            self.exp_avg_unc[n] = (
                self.beta2 * self.exp_avg_unc[n]
                + (1 - self.beta2) * (self.ipt[n] - self.exp_avg_ipt[n]).abs()
            )

    def _element_score(self, n: str) -> torch.Tensor:
        return self.exp_avg_ipt[n] * self.exp_avg_unc[n]

    def triplet_scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Name of each `lora_E` → score of its singular triplets, shape (r, 1)."""
        value_ipt: dict[str, torch.Tensor] = {}
        vector_ipt: dict[str, list[torch.Tensor]] = {}
        for n, _ in model.named_parameters():
            if f"lora_A.{self.adapter_name}" in n:  # mean over `in`: (r, 1)
                comb = torch.mean(self._element_score(n), dim=1, keepdim=True)
                vector_ipt.setdefault(n.replace("lora_A", "%s"), []).append(comb)
            if f"lora_B.{self.adapter_name}" in n:  # mean over `out`: (r, 1)
                comb = torch.mean(self._element_score(n), dim=0, keepdim=False).view(-1, 1)
                vector_ipt.setdefault(n.replace("lora_B", "%s"), []).append(comb)
            if f"lora_E.{self.adapter_name}" in n:
                value_ipt[n.replace("lora_E", "%s")] = self._element_score(n)
        scores: dict[str, torch.Tensor] = {}
        for name_m, vectors in vector_ipt.items():
            ipt_ab = torch.cat(vectors, dim=1).sum(dim=1)  # (r,)
            scores[name_m % "lora_E"] = (value_ipt[name_m].view(-1) + ipt_ab.view(-1)).view(-1, 1)
        return scores

    def mask_to_budget(self, model: nn.Module, budget: int) -> dict[str, list[bool]]:
        """Zero E of the lowest-scoring triplets so `budget` remain; the kept-triplet masks."""
        scores = self.triplet_scores(model)
        threshold = torch.kthvalue(
            torch.cat([s.view(-1) for s in scores.values()]), k=self.init_bgt - budget
        )[0].item()
        rank_pattern: dict[str, list[bool]] = {}
        with torch.no_grad():
            for n, p in model.named_parameters():
                if f"lora_E.{self.adapter_name}" in n:
                    p.masked_fill_(scores[n] <= threshold, 0.0)
                    rank_pattern[n] = (~(scores[n] <= threshold)).view(-1).tolist()
        return rank_pattern

    def update_and_allocate(
        self, model: nn.Module, global_step: int, force_mask: bool = False
    ) -> tuple[int, dict[str, list[bool]] | None]:
        """Update the EMAs (before the final phase) and mask when the schedule says so."""
        total_step = self.peft_config.total_step
        assert total_step is not None
        if global_step < total_step - self.peft_config.tfinal:
            self.update_ipt(model)
        budget, mask_ind = self.budget_schedule(global_step)
        rank_pattern = self.mask_to_budget(model, budget) if mask_ind or force_mask else None
        return budget, rank_pattern

    @torch.no_grad()
    def mask_using_rank_pattern(self, model: nn.Module, rank_pattern: dict[str, list[bool]]) -> None:
        """Re-zero the masked E entries (keys with or without the adapter name)."""
        truncated = self.adapter_name not in next(iter(rank_pattern.keys()))
        for n, p in model.named_parameters():
            if f"lora_E.{self.adapter_name}" in n:
                key = n.replace(f".{self.adapter_name}", "") if truncated else n
                mask = torch.tensor(rank_pattern[key], dtype=torch.bool, device=p.device).unsqueeze(-1)
                p.masked_fill_(~mask, 0.0)

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The EMAs (CPU copies) and the config's rank_pattern: all a resumed run needs besides the weights."""
        state: dict[str, Any] = {
            key: {n: t.detach().cpu().clone() for n, t in getattr(self, key).items()} for key in _SCORES
        }
        pattern = self.peft_config.rank_pattern
        state["rank_pattern"] = None if pattern is None else {k: list(v) for k, v in pattern.items()}
        return state

    def load_state_dict(self, state: dict[str, Any], device: torch.device | None = None) -> None:
        """Restore `state_dict()`'s output; tensors go to `device` (default: where they were saved)."""
        for key in _SCORES:
            tensors = state.get(key, {})
            setattr(self, key, {n: t if device is None else t.to(device) for n, t in tensors.items()})
        if state.get("rank_pattern") is not None:
            self.peft_config.rank_pattern = {k: list(v) for k, v in state["rank_pattern"].items()}


def orthogonal_regularization(model: nn.Module, adapter_name: str) -> torch.Tensor | None:
    """mean over P = lora_A (r, in) and Q = lora_B (out, r) of ‖PPᵀ - I‖_F, ‖QᵀQ - I‖_F (PEFT's forward).

    Selection is PEFT's: every parameter whose name contains "lora_A"/"lora_B" and `adapter_name`. None when
    there is none. Multiply by `orth_reg_weight` to get the term PEFT adds to the loss.
    """
    total: torch.Tensor | None = None
    count = 0
    for n, p in model.named_parameters():
        if ("lora_A" in n or "lora_B" in n) and adapter_name in n:
            cov = p @ p.T if "lora_A" in n else p.T @ p  # (r, r)
            eye = torch.eye(*cov.size(), out=torch.empty_like(cov))
            term = torch.norm(cov - eye, p="fro")
            total = term if total is None else total + term
            count += 1
    return None if total is None else total / count
