"""Token limits (issue 12, weak points): clamped at start-up to the base model's context, and counting the
positions an adapter adds (prompt tuning / P-tuning virtual tokens, prefix tuning's prefix) against every
limit. A request over a limit is a 422 that names it; one exactly at the limit is served."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from serve_helpers import prompt, save_base

from server.app import create_app
from server.engine import TokenLimits
from server.engine.limits import context_length
from server.settings import Settings

SHORT_CONTEXT = 64


@pytest.fixture(scope="module")
def short_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama, declared with 64 positions (the served demo base has 256)."""
    directory = save_base("llama", tmp_path_factory.mktemp("short-llama"))
    config = json.loads((directory / "config.json").read_text())
    config["max_position_embeddings"] = SHORT_CONTEXT
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _generate(n_tokens: int, adapter: str | None = None, new: int | None = 2) -> dict:
    parameters = {"adapter_id": adapter} | ({} if new is None else {"max_new_tokens": new})
    return {"inputs": prompt(n_tokens, n_tokens), "parameters": parameters}


def _error(response, *words: str) -> str:
    assert response.status_code == 422, response.text
    message = response.json()["error"]
    for word in words:
        assert word in message, message
    return message


def test_limits_are_clamped_to_the_base_context(
    short_llama_dir: Path, causal_adapters: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(base_model=str(short_llama_dir), adapters=[f"prompt={causal_adapters['prompt']}"])
    assert settings.max_total_tokens > SHORT_CONTEXT  # the defaults exceed the context
    app = create_app(settings)
    with (
        caplog.at_level(logging.WARNING, "swapyard.engine"),
        TestClient(app, raise_server_exceptions=False) as c,
    ):
        assert "--max-total-tokens 2048 -> 64" in caplog.text
        limits = c.app.state.swapyard.engine.limits  # type: ignore[attr-defined]
        assert (limits.max_input_tokens, limits.max_total_tokens, limits.max_new_tokens) == (63, 64, 63)

        _error(c.post("/generate", json=_generate(60, new=10)), "64 total tokens", "context of 64")
        _error(c.post("/generate", json=_generate(SHORT_CONTEXT)), "limit of 63", "context of 64")
        _error(c.post("/generate", json=_generate(3, new=SHORT_CONTEXT)), "limit of 63")
        completion = {"model": "prompt", "prompt": prompt(1, 40), "max_tokens": 22}  # 65
        _error(c.post("/v1/completions", json=completion), "3 virtual tokens", "64 total tokens")

        ok = c.post("/generate", json=_generate(54, new=10))  # 54 + 10 = 64: exactly the context
        assert ok.status_code == 200, ok.text
        virtual_ok = c.post("/generate", json=_generate(58, "prompt", new=3))  # 58 + 3 + 3 = 64
        assert virtual_ok.status_code == 200, virtual_ok.text
        _error(c.post("/generate", json=_generate(59, "prompt", new=3)), "= 62", "64 total tokens")


@pytest.fixture(scope="module")
def small_limits(llama_dir: Path, causal_adapters: dict[str, Path]) -> Iterator[TestClient]:
    names = ["lora4", "prompt", "ptuning", "prefix", "llama_adapter"]
    settings = Settings(
        base_model=str(llama_dir),
        adapters=[f"{n}={causal_adapters[n]}" for n in names],
        max_input_tokens=16,
        max_total_tokens=30,
        max_new_tokens_limit=20,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("adapter", ["prompt", "ptuning", "prefix"])
def test_virtual_tokens_count_against_every_limit(small_limits: TestClient, adapter: str) -> None:
    """Each of these adapters adds 3 positions: 14 prompt tokens fit the input limit of 16 on the base model,
    not with the adapter; 10 + 18 new fit the total of 30, not with it. 13 + 3 + 14 is exactly the limits."""
    c = small_limits
    for body in (_generate(14, None), _generate(10, None, new=18)):
        assert c.post("/generate", json=body).status_code == 200
    _error(c.post("/generate", json=_generate(14, adapter)), "14 tokens + 3 virtual tokens", "limit of 16")
    _error(c.post("/generate", json=_generate(10, adapter, new=18)), "+ 3 virtual", "30 total tokens")
    completion = {"model": adapter, "prompt": prompt(10, 10), "max_tokens": 18}
    _error(c.post("/v1/completions", json=completion), "+ 3 virtual", "30 total tokens")
    at_limit = c.post("/generate", json=_generate(13, adapter, new=14))
    assert at_limit.status_code == 200, at_limit.text


@pytest.mark.parametrize("adapter", ["llama_adapter", "lora4"])
def test_adapters_that_take_no_position_are_not_charged(small_limits: TestClient, adapter: str) -> None:
    """LLaMA-Adapter's prompt is attended apart, without positions; LoRA adds none."""
    assert small_limits.post("/generate", json=_generate(16, adapter)).status_code == 200
    assert small_limits.post("/generate", json=_generate(10, adapter, new=20)).status_code == 200


def test_classification_inputs_are_clamped_to_the_context(bert_dir: Path) -> None:
    """BERT's 128 positions: a longer input used to reach the model (a 500); now a 422 naming the limit."""
    with TestClient(create_app(Settings(base_model=str(bert_dir))), raise_server_exceptions=False) as c:
        _error(c.post("/classify", json={"inputs": prompt(1, 140)}), "limit of 128", "context of 128")
        assert c.post("/classify", json={"inputs": prompt(1, 126)}).status_code == 200  # + [CLS] [SEP]


# -- TokenLimits as a plain object ---------------------------------------------------------------------
def _settings() -> Settings:
    return Settings(max_input_tokens=1024, max_total_tokens=2048, max_new_tokens_limit=512)


def test_clamp_per_kind_of_base() -> None:
    causal = TokenLimits.from_settings(_settings(), 256, "causal-lm")
    assert (causal.max_input_tokens, causal.max_total_tokens, causal.max_new_tokens) == (255, 256, 255)
    assert causal.default_new_tokens == 20
    # A seq2seq model's input and output each have their own positions.
    seq2seq = TokenLimits.from_settings(_settings(), 256, "seq2seq-lm")
    assert (seq2seq.max_input_tokens, seq2seq.max_total_tokens, seq2seq.max_new_tokens) == (256, 2048, 256)
    classifier = TokenLimits.from_settings(_settings(), 128, "seq-cls")
    assert (classifier.max_input_tokens, classifier.max_new_tokens) == (128, 512)
    unknown = TokenLimits.from_settings(_settings(), None, "causal-lm")
    assert (unknown.max_input_tokens, unknown.max_total_tokens, unknown.clamped) == (1024, 2048, frozenset())
    roomy = TokenLimits.from_settings(_settings(), 1 << 20, "causal-lm")
    assert roomy.clamped == frozenset() and roomy.max_total_tokens == 2048
    tiny = TokenLimits.from_settings(_settings(), 8, "causal-lm")
    assert (tiny.max_new_tokens, tiny.default_new_tokens) == (7, 7)


def test_context_length_sources() -> None:
    assert context_length(SimpleNamespace(max_position_embeddings=256)) == 256
    assert context_length(SimpleNamespace(n_positions=1024)) == 1024  # GPT-2
    no_positions = SimpleNamespace()
    assert context_length(no_positions, SimpleNamespace(model_max_length=512)) == 512
    assert context_length(no_positions, SimpleNamespace(model_max_length=int(1e30))) is None  # "unknown"
    assert context_length(no_positions) is None
