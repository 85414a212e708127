"""The engine serves decode-only steps through the static decode step (`--cuda-graphs`; on a GPU a replayed CUDA
graph, here the same static step run eagerly): rows of LoRA, DoRA, IA3, prompt tuning and the base batched in
one bucket answer exactly as each adapter alone, and a step with a row the static step cannot run (prefix
tuning) or a prefill chunk goes to `paged_step` (a whole step: one such row makes the step eager)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serve_helpers import all_at_once, prompt, reference_tokens
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters_core.multi import MultiAdapterModel
from adapters_core.paged.graphs import DecodeGraphRunner
from adapters_core.paged.plan import StepPlan
from server.app import create_app
from server.engine import build_engine
from server.settings import Settings

NEW = 8
NAMES: list[str | None] = ["lora4", None, "ia3", "dora", "prompt", "prefix"]


class RecordingRunner(DecodeGraphRunner):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plans: list[StepPlan] = []

    def step(self, plan: StepPlan) -> Any:
        self.plans.append(plan)
        return super().step(plan)


@pytest.mark.timeout(600)
def test_decode_steps_run_static_and_answer_as_each_adapter_alone(
    llama_dir: Path, causal_adapters: dict[str, Path]
) -> None:
    names = [n for n in NAMES if n is None or n in causal_adapters]
    config = Settings(
        base_model=str(llama_dir),
        adapters=[f"{n}={causal_adapters[n]}" for n in names if n is not None],
        max_batch_size=8,
        kv_block_size=4,
    )
    assert config.cuda_graphs, "on by default"
    engine = build_engine(config)
    runner = RecordingRunner(engine.model, max_batch=8, use_graphs=False)
    engine.decode_graphs = runner  # the CPU stand-in for the GPU's graphs: the same static step, eagerly
    eager: list[StepPlan] = []
    step = engine.model.paged_step

    def recording(plan: StepPlan) -> Any:
        eager.append(plan)
        return step(plan)

    engine.model.paged_step = recording
    texts = [prompt(70 + i, length=4 + i) for i in range(len(names))]
    new = [
        2 if name == "prefix" else NEW for name in names
    ]  # the steps after the prefix row leaves are static
    bodies = [
        {
            "inputs": texts[i],
            "parameters": {"adapter_id": names[i], "max_new_tokens": new[i], "details": True},
        }
        for i in range(len(names))
    ]
    with TestClient(create_app(config, engine=engine), raise_server_exceptions=False) as client:
        out = all_at_once(client, engine, bodies)
    multi = MultiAdapterModel(AutoModelForCausalLM.from_pretrained(llama_dir))
    for name in names:
        if name is not None:
            multi.add(name, str(causal_adapters[name]))
    tok = AutoTokenizer.from_pretrained(llama_dir)
    for name, text, n, response in zip(names, texts, new, out):
        assert response.status_code == 200, response.text
        got = [t["id"] for t in response.json()["details"]["tokens"]]
        assert got == reference_tokens(multi, tok, text, name, n), name
    assert max(len(p.chunks) for p in runner.plans) >= 4, "the static step never batched rows"
    assert all(
        len(c.tokens) == 1 and not (c.adapter or "").startswith("prefix")
        for p in runner.plans
        for c in p.chunks
    )
    assert any(
        c.adapter and c.adapter.startswith("prefix") for p in eager for c in p.chunks if len(c.tokens) == 1
    ), "the prefix-tuning row's decode steps ran eagerly"
