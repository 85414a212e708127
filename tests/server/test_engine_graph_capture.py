"""The engine captures its CUDA-graph decode steps at start-up (`--cuda-graphs`): every (batch bucket, width
bucket) shape a decode step can meet, bounded by `--max-batch-size` and by the blocks of a row of
`--max-total-tokens` positions, so that serving afterwards captures nothing; a capture that fails at start-up
turns graphs off and the server serves eagerly. On the CPU a stand-in for the capture (`Engine.graph_capture`)
records what is captured and when; on a GPU (marked `gpu`) the real graphs are counted."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from serve_helpers import all_at_once, prompt, reference_tokens
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters_core.multi import MultiAdapterModel
from adapters_core.paged.graphs import DecodeGraphRunner, Replay
from server.app import create_app
from server.engine import build_engine
from server.settings import Settings

NEW = 6
NAMES: list[str | None] = ["lora4", None, "ia3", "dora", "lora4"]
# max_batch_size 8 -> batch buckets 1, 2, 4, 8; 64 positions in blocks of 4 = 16 blocks, + 1 for virtual
# positions = 17 -> width buckets 1, 2, 4, 8, 16, 17 (the pool holds far more). Largest first.
SHAPES = [(b, w) for b in (8, 4, 2, 1) for w in (17, 16, 8, 4, 2, 1)]


def settings(llama_dir: Path, adapters: dict[str, Path], **kw: Any) -> Settings:
    names = sorted({n for n in NAMES if n is not None})
    return Settings(
        base_model=str(llama_dir),
        adapters=[f"{n}={adapters[n]}" for n in names],
        max_batch_size=8,
        kv_block_size=4,
        max_input_tokens=32,
        max_total_tokens=64,
        **kw,
    )


class FakeCapture:
    """Stands in for CUDA-graph capture: runs the step once (the real capture's warm-up does too) and returns the
    step itself as the "replay", counting captures and replays."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.captures = 0
        self.replays = 0

    def __call__(self, run: Replay) -> Replay:
        if self.fail:
            raise RuntimeError("capture failed (a stand-in)")
        run()
        self.captures += 1

        def replay() -> torch.Tensor:
            self.replays += 1
            return run()

        return replay


def serve(client: TestClient, engine: Any, texts: list[str]) -> list[Any]:
    """POST every text at once (held until all are queued, so that they decode in one batch); the responses."""
    params = [{"adapter_id": name, "max_new_tokens": NEW, "details": True} for name in NAMES]
    return all_at_once(client, engine, [{"inputs": t, "parameters": p} for t, p in zip(texts, params)])


def assert_answers(llama_dir: Path, adapters: dict[str, Path], texts: list[str], out: list[Any]) -> None:
    """Each response's tokens are its adapter's alone (MultiAdapterModel.generate on the CPU)."""
    multi = MultiAdapterModel(AutoModelForCausalLM.from_pretrained(llama_dir))
    for name in {n for n in NAMES if n is not None}:
        multi.add(name, str(adapters[name]))
    tok = AutoTokenizer.from_pretrained(llama_dir)
    for name, text, response in zip(NAMES, texts, out):
        assert response.status_code == 200, response.text
        got = [t["id"] for t in response.json()["details"]["tokens"]]
        assert got == reference_tokens(multi, tok, text, name, NEW), name


@pytest.mark.timeout(600)
def test_start_up_captures_every_shape_and_serving_captures_none(
    llama_dir: Path, causal_adapters: dict[str, Path]
) -> None:
    config = settings(llama_dir, causal_adapters)
    engine = build_engine(config)
    fake = engine.graph_capture = FakeCapture()
    texts = [prompt(90 + i, length=3 + i) for i in range(len(NAMES))]
    with TestClient(create_app(config, engine=engine), raise_server_exceptions=False) as client:
        runner = engine.decode_graphs
        assert isinstance(runner, DecodeGraphRunner), "start-up made the runner"
        assert runner.captured == SHAPES and fake.captures == len(SHAPES)
        out = serve(client, engine, texts)
    assert runner.captured == SHAPES and fake.captures == len(SHAPES), "a step captured while serving"
    assert fake.replays >= NEW - 1, "decode steps did not replay the captured shapes"
    assert engine.decode_graphs is runner
    assert_answers(llama_dir, causal_adapters, texts, out)


@pytest.mark.timeout(600)
def test_a_capture_that_fails_at_start_up_turns_graphs_off_and_serves(
    llama_dir: Path, causal_adapters: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    config = settings(llama_dir, causal_adapters)
    engine = build_engine(config)
    engine.graph_capture = FakeCapture(fail=True)
    texts = [prompt(110 + i, length=3 + i) for i in range(len(NAMES))]
    app = create_app(config, engine=engine)
    with (
        caplog.at_level(logging.ERROR, logger="swapyard.engine"),
        TestClient(app, raise_server_exceptions=False) as client,
    ):
        assert engine.decode_graphs is False
        out = serve(client, engine, texts)
    assert "capturing CUDA-graph decode steps at start-up failed" in caplog.text
    assert_answers(llama_dir, causal_adapters, texts, out)


def test_without_cuda_graphs_start_up_makes_no_runner(
    llama_dir: Path, causal_adapters: dict[str, Path]
) -> None:
    config = settings(llama_dir, causal_adapters, cuda_graphs=False)
    engine = build_engine(config)
    fake = engine.graph_capture = FakeCapture()
    with TestClient(create_app(config, engine=engine), raise_server_exceptions=False):
        assert engine.decode_graphs is False and fake.captures == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.timeout(600)
def test_on_cuda_start_up_captures_real_graphs_and_serving_captures_none(
    llama_dir: Path, causal_adapters: dict[str, Path]
) -> None:
    config = settings(llama_dir, causal_adapters, device="cuda")
    engine = build_engine(config)
    texts = [prompt(130 + i, length=3 + i) for i in range(len(NAMES))]
    with TestClient(create_app(config, engine=engine), raise_server_exceptions=False) as client:
        runner = engine.decode_graphs
        assert isinstance(runner, DecodeGraphRunner) and runner.use_graphs
        assert runner.captured == SHAPES and runner.captures == len(SHAPES)
        out = serve(client, engine, texts)
    assert runner.captures == len(SHAPES), "a step captured while serving"
    assert engine.decode_graphs is runner, "graphs were turned off"
    assert_answers(llama_dir, causal_adapters, texts, out)
