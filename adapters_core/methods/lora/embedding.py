"""LoRA over `nn.Embedding` (reference §5.4, §5.5).

Tensors are plain parameters: `lora_embedding_A[name]` (r, V) and `lora_embedding_B[name]` (D, r).
For ids (B, T): `y = E[ids] + scaling · (A.T[ids] @ B.T)`, with the base layer's padding_idx/max_norm used
for the lookup and an `embed_scale` (Gemma-style scaled embeddings) applied to the LoRA term too.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...tuners.layer import adapter_dtype
from .config import LoraConfig
from .dora import DoraLinearLayer
from .layer import LoraLayer


class DoraEmbeddingLayer(DoraLinearLayer):
    """DoRA magnitude (D,) of an embedding: norms are taken over the vocabulary of Wᵀ + ΔEᵀ (D, V)."""

    def embedding_scale(
        self, base_weight: torch.Tensor, emb_a: torch.Tensor, emb_b: torch.Tensor, scaling: float
    ) -> torch.Tensor:
        """m / n, shape (D,). base_weight (V, D), emb_a (r, V), emb_b (D, r)."""
        norm = self.row_norm(base_weight.T, scaling * (emb_b @ emb_a).detach()).detach()
        return self.weight / norm


class Embedding(LoraLayer):
    def __init__(
        self, base_layer: nn.Embedding, adapter_name: str, config: LoraConfig, r: int, lora_alpha: float
    ):
        super().__init__(base_layer)
        self.fan_in_fan_out = True  # merging transposes (B @ A).T into (V, D)
        self.update_layer(adapter_name, r, lora_alpha, config)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config: LoraConfig) -> None:
        if config.lora_bias:
            raise ValueError("lora_bias=True is not supported for Embedding layers (PEFT does not allow it).")
        self._set_common(adapter_name, r, lora_alpha, config)
        weight = self.base_layer.weight
        kw: dict[str, Any] = {"device": weight.device, "dtype": adapter_dtype(weight)}
        emb_a = torch.zeros(r, self.in_features, **kw)
        emb_b = torch.empty(self.out_features, r, **kw)
        if config.init_lora_weights is False:
            nn.init.normal_(emb_a)
        nn.init.normal_(emb_b)  # PEFT: A zeros, B normal for embeddings (the reverse of Linear)
        self.lora_embedding_A[adapter_name] = nn.Parameter(emb_a)
        self.lora_embedding_B[adapter_name] = nn.Parameter(emb_b)
        if config.use_dora:
            dora = DoraEmbeddingLayer(fan_in_fan_out=True)
            delta = self.scaling[adapter_name] * (emb_b @ emb_a)  # (D, V)
            dora.init_magnitude(weight.T, delta)
            self.lora_magnitude_vector[adapter_name] = dora

    def shape_spec(self, container: str, adapter_name: str) -> tuple[tuple[str, int], ...]:
        r = self.r[adapter_name]
        if container == "lora_embedding_A":
            return (("r", r), ("num_embeddings", self.in_features))
        if container == "lora_embedding_B":
            return (("embedding_dim", self.out_features), ("r", r))
        return (("embedding_dim", self.out_features),)

    def _embed(self, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        return F.embedding(
            ids,
            table,
            padding_idx=base.padding_idx,
            max_norm=base.max_norm,
            norm_type=base.norm_type,
            scale_grad_by_freq=base.scale_grad_by_freq,
            sparse=base.sparse,
        )

    def _embed_scale(self) -> torch.Tensor | None:
        scale = getattr(self.base_layer, "embed_scale", None)
        if isinstance(scale, torch.Tensor) and scale.numel() == 1:
            return scale
        if isinstance(scale, (int, float)):
            return torch.tensor(float(scale))
        return None

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """ΔE = (B @ A).T · scaling, shape (V, D)."""
        a, b = self.lora_embedding_A[adapter_name], self.lora_embedding_B[adapter_name]
        return (b @ a).T * self.scaling[adapter_name]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        bypassed = self.adapters_bypassed()  # first: a disabled merged layer unmerges before running
        result = self.base_layer(x, *args, **kwargs)
        if bypassed:
            return result
        result_dtype = result.dtype
        embed_scale = self._embed_scale()
        for name in self.active_adapters:
            if name not in self.lora_embedding_A:
                continue
            emb_a, emb_b = self.lora_embedding_A[name], self.lora_embedding_B[name]
            scaling = self.scaling[name]
            lora_out = (self._embed(x, emb_a.T) @ emb_b.T) * scaling  # (B, T, D)
            if embed_scale is not None:
                lora_out = lora_out * embed_scale.to(lora_out.dtype)
            if name in self.lora_magnitude_vector:
                dora = self.lora_magnitude_vector[name]
                mag = dora.embedding_scale(self.base_layer.weight, emb_a, emb_b, scaling)
                result = mag * result + mag * lora_out
            else:
                result = result + lora_out
        return result.to(result_dtype)

    def merge(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        for name in self.adapters_to_merge(adapter_names):
            if name not in self.lora_embedding_A:
                continue
            weight = self.base_layer.weight
            delta = self.get_delta_weight(name).to(weight.dtype)
            if name in self.lora_magnitude_vector:
                dora = self.lora_magnitude_vector[name]
                norm = dora.row_norm(weight.data.T, delta.T).detach()  # (D,)
                dora._merge_norms[name] = norm
                new_weight = (dora.weight / norm).view(1, -1) * (weight.data + delta)
            else:
                new_weight = weight.data + delta
            new_weight = self.checked_merge(new_weight, name, safe_merge)
            weight.data = new_weight.to(weight.dtype)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name not in self.lora_embedding_A:
                continue
            weight = self.base_layer.weight
            delta = self.get_delta_weight(name).to(weight.dtype)
            if name in self.lora_magnitude_vector:
                dora = self.lora_magnitude_vector[name]
                factor = (dora.weight / dora._merge_norms.pop(name)).view(1, -1)
                weight.data = weight.data / factor - delta
            else:
                weight.data -= delta
