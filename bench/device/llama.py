"""The model `decode.py` and `graphs.py` step: Llama-3-8B geometry (hidden 4096, GQA 32/8 heads, MLP 14336,
vocab 128,256) with 2 layers, bf16, random weights, as a `MultiAdapterModel` on the paged path, with
rank-16 LoRA adapters on every linear layer of the blocks (not lm_head), and a KV pool where every row
already holds `context` positions (the pool's contents do not change the work, so nothing is prefilled).

`DecodeBench.plan(rows, names)` is one decode step of `rows` rows, row r under `names[r]` (None = base).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BLOCK = 16


@dataclass(frozen=True)
class Geometry:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    context: int  # positions every row holds before the timed step


LLAMA3_8B_2_LAYERS = Geometry(4096, 14336, 2, 32, 8, 128256, context=1024)
SMOKE = Geometry(64, 224, 2, 4, 2, 256, context=32)


class DecodeBench:
    """A paged MultiAdapterModel with `adapters` named a00, a01, … and a KV pool for `max_rows` rows."""

    def __init__(
        self, geometry: Geometry, dev: torch.device, *, adapters: int, rank: int, max_rows: int, seed: int = 0
    ) -> None:
        from adapters_core import LoraConfig
        from adapters_core.multi import MultiAdapterModel
        from bench.serving.fixtures import BaseSpec, build_base, lora_shapes, lora_state

        self.geometry, self.device = geometry, dev
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        spec = BaseSpec(
            vocab_size=geometry.vocab,
            hidden_size=geometry.hidden,
            intermediate_size=geometry.intermediate,
            num_hidden_layers=geometry.layers,
            num_attention_heads=geometry.heads,
            num_key_value_heads=geometry.kv_heads,
            max_position_embeddings=2 * geometry.context + 64,
            seed=seed,
        )
        base = build_base(spec, device=str(dev), dtype=dtype)
        shapes = lora_shapes(base, ALL_LINEAR)
        width = sum(m.in_features + m.out_features for m in base.modules() if isinstance(m, torch.nn.Linear))
        # Enough pool pages for every adapter in every module however the model splits its budget by width.
        budget = int(1.1 * adapters * rank * width * torch.finfo(dtype).bits // 8) + (1 << 20)
        self.model = MultiAdapterModel(
            base, max_adapters=adapters, adapter_memory_bytes=budget, rank_capacity=rank
        )
        self.names = [f"a{i:02d}" for i in range(adapters)]
        config = LoraConfig(
            r=rank, lora_alpha=2 * rank, target_modules=list(ALL_LINEAR), task_type="CAUSAL_LM"
        )
        for i, name in enumerate(self.names):
            state = lora_state(shapes, rank, seed=1000 + i, b_scale=0.02, dtype=dtype, device=str(dev))
            self.model.add(name, (config, state))
        self.per_row = -(-(geometry.context + 1) // BLOCK)
        reserved = self.model.reserved_blocks
        self.model.init_kv_cache(reserved + max_rows * self.per_row, BLOCK)
        self.tables = [
            list(range(reserved + r * self.per_row, reserved + (r + 1) * self.per_row))
            for r in range(max_rows)
        ]

    def plan(self, rows: int, names: list[str | None]) -> Any:
        from adapters_core.paged import SeqChunk, StepPlan

        context = self.geometry.context
        return StepPlan([SeqChunk(r, names[r], [3 + r % 100], context, self.tables[r]) for r in range(rows)])

    def names_for(self, rows: int, adapters: int) -> list[str | None]:
        """Row r under adapter r mod `adapters` (0: every row base-only)."""
        return [self.names[r % adapters] if adapters else None for r in range(rows)]

    def step(self, plan: Any) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.paged_step(plan)

    def step_ms(self, plan: Any, reps: int) -> float:
        """Median wall milliseconds of one eager step, the device synchronised around each."""
        self.step(plan)
        times = []
        for _ in range(reps):
            self.sync()
            start = time.perf_counter()
            self.step(plan)
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
