"""The README's run command: `swapyard serve` with no base model builds the embedded demo offline (base model,
tokenizer, adapters trained by `swapyard train` in a child process) and serves it; the adapters visibly change
what the model answers."""

from __future__ import annotations

import httpx
import pytest
from conftest import running_server

pytestmark = pytest.mark.e2e


def test_demo_builds_from_nothing_and_its_adapters_change_the_answer(tmp_path) -> None:
    demo_dir = tmp_path / "demo"
    with running_server(["--demo-dir", str(demo_dir)], tmp_path / "serve.log", timeout_s=300) as url:
        answers = {}
        for adapter in (None, "french", "pirate"):
            body = {"inputs": "Hello!", "parameters": {"adapter_id": adapter, "max_new_tokens": 12}}
            r = httpx.post(f"{url}/generate", json=body, timeout=60)
            assert r.status_code == 200, r.text
            answers[adapter] = r.json()["generated_text"]
        models = httpx.get(f"{url}/v1/models", timeout=10).json()
        unknown = httpx.post(
            f"{url}/generate", json={"inputs": "Hello!", "parameters": {"adapter_id": "klingon"}}, timeout=10
        )
    assert len(set(answers.values())) == 3, answers  # base, french and pirate each answer differently
    assert "bonjour" in answers["french"], answers
    assert {m["id"] for m in models["data"]} >= {"french", "pirate"}
    assert unknown.status_code == 404 and "klingon" in unknown.json()["error"]
    assert (demo_dir / "READY").exists() or any(demo_dir.rglob("READY"))
