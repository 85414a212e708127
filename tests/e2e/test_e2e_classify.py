"""`swapyard serve` on a tiny BERT with two PEFT classification adapters whose label sets differ."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from serve_helpers import make_cls_adapters, prompt, save_base

pytestmark = pytest.mark.e2e


def test_classify_two_label_sets_concurrently(
    tmp_path_factory: pytest.TempPathFactory, server_factory
) -> None:
    root = tmp_path_factory.mktemp("e2e-cls")
    base = save_base("bert", root / "base")
    adapters = make_cls_adapters(base, root / "adapters")
    url = server_factory(["--base-model", str(base), "--adapter-dir", str(root / "adapters")])

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            bodies = [
                {"inputs": [prompt(i), prompt(i + 50)], "parameters": {"adapter_id": name}}
                for i in range(6)
                for name in adapters
            ]
            return await asyncio.gather(*(client.post("/classify", json=b) for b in bodies))

    responses = asyncio.run(run())
    names = [name for _ in range(6) for name in adapters]
    for name, response in zip(names, responses):
        assert response.status_code == 200, response.text
        for ranked in response.json():
            assert sorted(r["label"] for r in ranked) == sorted(adapters[name][1])
            assert abs(sum(r["score"] for r in ranked) - 1.0) < 1e-4
    # the same text alone gives the same scores as inside the concurrent batches
    alone = httpx.post(
        f"{url}/classify", json={"inputs": prompt(0), "parameters": {"adapter_id": "topic"}}
    ).json()
    batched = responses[1].json()[0]
    assert [r["label"] for r in alone[0]] == [r["label"] for r in batched]
    assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(alone[0], batched))
    missing = httpx.post(f"{url}/classify", json={"inputs": "w1", "parameters": {"adapter_id": "nope"}})
    assert missing.status_code == 404
