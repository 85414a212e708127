"""Device memory defaults (issue 18, server/budget.py): the adapter pools and the KV cache are sized from the
memory free after the base loads (a made-up number here: a pure function), and the adapter budget is not
split over lm_head unless an adapter targets it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from serve_helpers import save_base
from tiny_models import tiny_llama
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from adapters_core import LoraConfig
from adapters_core.multi import MultiAdapterModel
from server import budget as budget_module
from server import modeling
from server.budget import (
    ADAPTER_FREE_SHARE,
    CPU_ADAPTER_BYTES,
    CPU_KV_CACHE_BYTES,
    KV_FREE_SHARE,
    LoraGeometry,
    device_budgets,
)
from server.settings import Settings

GIB = 1 << 30
# Llama-3-8B: per layer q 4096+4096, k 4096+1024, v 4096+1024, o 4096+4096, gate/up 4096+14336, down 14336+4096
LLAMA3_8B_LAYER_WIDTH = 8192 + 5120 + 5120 + 8192 + 3 * 18432


def llama3_8b_geometry() -> LoraGeometry:
    config = LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
    )
    with torch.device("meta"):  # structure only: nothing allocated
        return LoraGeometry.of(LlamaForCausalLM(config).to(torch.bfloat16))


def test_geometry_leaves_lm_head_out_of_the_split() -> None:
    geometry = llama3_8b_geometry()
    assert geometry.split_width == 32 * LLAMA3_8B_LAYER_WIDTH  # lm_head (128256 + 4096) not counted
    assert geometry.dtype_bytes == 2 and geometry.modules == 32 * 7 + 1


def test_gpu_defaults_split_free_memory_and_hold_many_8b_adapters() -> None:
    geometry = llama3_8b_geometry()
    free = 64 * GIB  # an 80 GB card after an 8B bf16 base
    budgets = device_budgets(free, geometry, max_adapters=256, max_rank=256)
    assert budgets.adapter_bytes == int(free * ADAPTER_FREE_SHARE) == 16 * GIB
    assert budgets.kv_bytes == int(free * KV_FREE_SHARE) == 32 * GIB
    assert budgets.adapter_bytes + budgets.kv_bytes <= 0.75 * free  # a quarter stays for activations
    rank16_all_linear = 16 * geometry.split_width * geometry.dtype_bytes
    assert (256 << 20) // rank16_all_linear == 3  # the old fixed default: the "about three"
    assert budgets.adapter_bytes // rank16_all_linear >= 190


def test_adapter_default_is_capped_at_what_the_slots_can_use() -> None:
    geometry = llama3_8b_geometry()
    budgets = device_budgets(64 * GIB, geometry, max_adapters=4, max_rank=16)
    tables = geometry.modules * 4 * (16 + 3) * 8
    assert budgets.adapter_bytes == 4 * 16 * geometry.split_width * 2 + tables
    assert budgets.kv_bytes == 32 * GIB  # the KV share does not grow with what adapters leave


def test_cpu_keeps_fixed_defaults() -> None:
    budgets = device_budgets(None, llama3_8b_geometry(), max_adapters=32, max_rank=256)
    assert (budgets.adapter_bytes, budgets.kv_bytes) == (CPU_ADAPTER_BYTES, CPU_KV_CACHE_BYTES)


def lora_state(base: torch.nn.Module, targets: list[str], rank: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, module in base.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            prefix = f"base_model.model.{name}"
            state[f"{prefix}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=g)
            state[f"{prefix}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=g)
    return state


def test_pools_split_the_budget_without_lm_head_until_an_adapter_targets_it() -> None:
    total = 4 << 20
    model = MultiAdapterModel(tiny_llama(), max_adapters=2, adapter_memory_bytes=total, rank_capacity=8)
    plain = tiny_llama()
    split = LoraGeometry.of(plain).split_width
    head = plain.get_output_embeddings()
    assert split == sum(
        m.in_features + m.out_features
        for m in plain.modules()
        if isinstance(m, torch.nn.Linear) and m is not head
    )
    targets = ["q_proj", "lm_head"]
    model.add("a", (LoraConfig(r=4, target_modules=targets), lora_state(tiny_llama(), targets, 4)))
    layers = model._layers
    tables = 2 * (8 + 3) * 8
    q = plain.model.layers[0].self_attn.q_proj
    assert (
        layers["model.layers.0.self_attn.q_proj"].lora.budget_bytes
        == tables + total * (q.in_features + q.out_features) // split
    )
    head_width = head.in_features + head.out_features
    assert layers["lm_head"].lora.budget_bytes == tables + total * head_width // (split + head_width)
    assert layers["model.layers.0.self_attn.k_proj"].lora is None  # untargeted modules allocate nothing


@pytest.mark.parametrize(("free", "explicit"), [(8 * GIB, None), (8 * GIB, 5 << 20), (None, None)])
def test_load_base_sizes_the_adapter_pools_from_free_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free: int | None, explicit: int | None
) -> None:
    base_dir = save_base("llama", tmp_path / "base")
    monkeypatch.setattr(modeling, "free_device_bytes", lambda device: free)
    settings = Settings(base_model=str(base_dir), device="cpu", adapter_device_bytes=explicit, max_adapters=4)
    multi = modeling.load_base(settings, str(base_dir)).model
    expected = device_budgets(
        free,
        LoraGeometry.of(AutoModelForCausalLM.from_pretrained(base_dir)),
        max_adapters=4,
        max_rank=settings.max_adapter_rank,
    ).adapter_bytes
    budget = multi._layers["model.layers.0.self_attn.q_proj"]._budget
    assert budget.total_bytes == (explicit or expected)
    if free is None:
        assert budget.total_bytes == CPU_ADAPTER_BYTES
    assert budget_module.free_device_bytes(torch.device("cpu")) is None
