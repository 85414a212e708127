"""Tiny PEFT-format adapters written directly (config JSON + safetensors bytes), and reference outputs.

Every adapter is generated from a seed for a base model's actual module shapes, with non-trivial weights
(LoRA B is not zero, IA3 vectors are not one), so that any mix-up between adapters changes the output.
The reference for "that adapter alone" is a second MultiAdapterModel over an identical base holding only it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import torch
from safetensors.torch import save
from tiny_models import tiny_llama
from torch import nn

from adapters_core.multi import MultiAdapterModel
from server.store import AdapterStore, StoreConfig
from server.store.parsing import parse_config, parse_weights

T = TypeVar("T")
LLAMA_TARGETS = ("q_proj", "v_proj")
IA3_TARGETS = ("k_proj", "v_proj", "down_proj")
IA3_FEEDFORWARD = ("down_proj",)
INPUT_IDS = torch.tensor([[5, 17, 33, 80, 101, 7, 250, 64]])  # (1, 8)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine on a fresh event loop (tests are plain functions: no async plugin needed)."""
    return asyncio.run(coro)


def _linears(base: nn.Module, targets: tuple[str, ...]) -> list[tuple[str, nn.Linear]]:
    return [
        (path, m)
        for path, m in base.named_modules()
        if isinstance(m, nn.Linear) and path.rsplit(".", 1)[-1] in targets
    ]


def lora_files(
    base: nn.Module,
    seed: int,
    *,
    rank: int = 4,
    targets: tuple[str, ...] = LLAMA_TARGETS,
    scale: float = 0.3,
    fill: float | None = None,
) -> tuple[bytes, bytes]:
    """(adapter_config.json, adapter_model.safetensors) bytes of a LoRA for `base` (fill: every B value)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for path, m in _linears(base, targets):
        key = f"base_model.model.{path}"
        state[f"{key}.lora_A.weight"] = torch.randn(rank, m.in_features, generator=g) * scale
        b = torch.randn(m.out_features, rank, generator=g) * scale
        state[f"{key}.lora_B.weight"] = b.fill_(fill) if fill is not None else b
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": list(targets),
        "lora_dropout": 0.0,
        "bias": "none",
    }
    return json.dumps(config).encode(), save(state, metadata={"format": "pt"})


def ia3_files(base: nn.Module, seed: int, *, scale: float = 0.3) -> tuple[bytes, bytes]:
    """An IA3 adapter on k/v (output side) and down_proj (input side, feed-forward)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for path, m in _linears(base, IA3_TARGETS):
        ff = path.endswith(IA3_FEEDFORWARD)
        shape = (1, m.in_features) if ff else (m.out_features, 1)
        state[f"base_model.model.{path}.ia3_l"] = 1.0 + scale * torch.randn(*shape, generator=g)
    config = {
        "peft_type": "IA3",
        "task_type": "CAUSAL_LM",
        "target_modules": list(IA3_TARGETS),
        "feedforward_modules": list(IA3_FEEDFORWARD),
    }
    return json.dumps(config).encode(), save(state, metadata={"format": "pt"})


def mixed_files(base: nn.Module, seed: int) -> tuple[bytes, bytes]:
    """Adapter number `seed` of the big population: every 5th is IA3, the rest LoRA of rank 2, 4 or 8."""
    if seed % 5 == 4:
        return ia3_files(base, seed)
    return lora_files(base, seed, rank=(2, 4, 8)[seed % 3])


def write_adapter(directory: str, files: tuple[bytes, bytes]) -> str:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "adapter_config.json"), "wb") as fh:
        fh.write(files[0])
    with open(os.path.join(directory, "adapter_model.safetensors"), "wb") as fh:
        fh.write(files[1])
    return directory


def make_model(slots: int = 16, memory_bytes: int = 4 << 20, rank_capacity: int = 16) -> MultiAdapterModel:
    return MultiAdapterModel(
        tiny_llama(0), max_adapters=slots, adapter_memory_bytes=memory_bytes, rank_capacity=rank_capacity
    )


def make_store(
    tmp: str,
    model: MultiAdapterModel | None = None,
    metrics: Any = None,
    validator: Any = None,
    **overrides: Any,
) -> AdapterStore:
    """A store over a tiny llama with an uploads root and an adapter root under `tmp`."""
    roots = os.path.join(tmp, "adapters")
    os.makedirs(roots, exist_ok=True)
    kwargs: dict[str, Any] = dict(
        adapter_roots=(roots,),
        uploads_root=os.path.join(tmp, "uploads"),
        capacity_timeout_s=5.0,
        max_rank=16,
    )
    kwargs.update(overrides)
    return AdapterStore(model or make_model(), StoreConfig(**kwargs), metrics=metrics, validator=validator)


def resident_names(store: AdapterStore) -> list[str]:
    """Public names of the versions in the model's pools, least recently used first; the device tier's
    entries are checked against the model itself, so that this reads the model, not the bookkeeping."""
    keys = list(store.device.entries)
    assert sorted(store.model.adapters) == sorted(k.model_name for k in keys)
    return [k.name for k in keys]


def forward(model: MultiAdapterModel, lock: Any, adapter_names: list[str | None]) -> torch.Tensor:
    """Logits (B, 8, V) of INPUT_IDS repeated per row, under the store's model lock."""
    ids = INPUT_IDS.expand(len(adapter_names), -1)
    with lock, torch.no_grad():
        return model(input_ids=ids, adapter_names=adapter_names).logits


class Reference:
    """Each adapter's output when it is the only adapter of a fresh model (cached by content)."""

    def __init__(self) -> None:
        self.model = make_model(slots=1)
        self._cache: dict[bytes, torch.Tensor] = {}

    def logits(self, files: tuple[bytes, bytes]) -> torch.Tensor:
        key = files[0] + files[1]
        if key not in self._cache:
            config = parse_config(files[0], "reference")
            state = parse_weights(files[1], "reference")
            self.model.add("only", (config, state))
            try:
                with torch.no_grad():
                    self._cache[key] = self.model(input_ids=INPUT_IDS, adapter_names=["only"]).logits[0]
            finally:
                self.model.remove("only")
        return self._cache[key]


def base_logits() -> torch.Tensor:
    with torch.no_grad():
        return make_model(slots=1)(input_ids=INPUT_IDS).logits[0]


def pool_pages_used(model: MultiAdapterModel) -> int:
    """Pages held in every LoRA / IA3 pool of the model (0 when nothing is resident)."""
    used = 0
    for module in model.modules():
        lora = getattr(module, "lora", None)
        if lora is not None and hasattr(lora, "num_pages"):
            used += lora.num_pages - lora.free_bytes // lora.page_bytes
        for attr in ("ia3_in", "ia3_out", "dora"):
            pool = getattr(module, attr, None)
            if pool is not None:
                used += pool.num_pages - pool.free_bytes // pool.page_bytes
    return used


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
