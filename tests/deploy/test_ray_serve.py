"""Scale-out on Ray Serve (server/ray_app.py): two local replicas on CPU with the tiny model.

One test on purpose: a Ray cluster takes seconds to start, and pytest-xdist would start one per worker if the
checks were split into tests that land on different workers.
"""

from __future__ import annotations

import os
import socket
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from deploy_helpers import ADAPTERS
from fastapi.testclient import TestClient
from serve_helpers import prompt

from server.app import create_app
from server.settings import Settings

ray = pytest.importorskip("ray", reason="Ray Serve is not installed: pip install -e '.[ray]' (in .[test])")
serve = pytest.importorskip("ray.serve")
from server.ray_app import ADAPTER_HEADER, REPLICA_HEADER, build_app  # noqa: E402

MAX_NEW_TOKENS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _body(text: str, adapter: str | None) -> dict:
    return {
        "inputs": text,
        "parameters": {"adapter_id": adapter, "max_new_tokens": MAX_NEW_TOKENS, "details": True},
    }


def _answer(response: httpx.Response) -> tuple[str, list[int]]:
    assert response.status_code == 200, response.text
    data = response.json()
    return data["generated_text"], [t["id"] for t in data["details"]["tokens"]]


@pytest.fixture(scope="module")
def settings(llama_dir: Path, adapter_dir: Path) -> Settings:
    return Settings(base_model=str(llama_dir), adapter_dir=str(adapter_dir), max_adapters=4)


@pytest.fixture(scope="module")
def ray_url(settings: Settings) -> Iterator[str]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(settings, replicas=2, replica_cpus=1), name="swapyard", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/ready").status_code != 200:  # serve.run waits for replicas; be sure anyway
            assert time.monotonic() < deadline, "the Ray Serve replicas never became ready"
            time.sleep(0.5)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_route_by_adapter_and_answer_like_one_server(settings: Settings, ray_url: str) -> None:
    requests = [(prompt(seed), adapter) for seed in (1, 2) for adapter in [None, *ADAPTERS]]
    with TestClient(create_app(settings)) as one_server:
        expected = [_answer(one_server.post("/generate", json=_body(t, a))) for t, a in requests]

    with httpx.Client(base_url=ray_url, timeout=60) as client:
        # Exactness: through Ray, with and without the routing header, the answers are one server's answers.
        for (text, adapter), want in zip(requests, expected):
            headers = {ADAPTER_HEADER: adapter} if adapter else {}
            got = _answer(client.post("/generate", json=_body(text, adapter), headers=headers))
            assert got == want, f"adapter {adapter}: Ray answered {got}, one server {want}"
            assert _answer(client.post("/generate", json=_body(text, adapter))) == want

        # Affinity: the replica that first took an adapter keeps its traffic. Each first request waits for
        # the replica's report to reach the routers (pushed every 0.1 s), so the next adapter sees it.
        holder = {}
        for adapter in ADAPTERS:
            response = client.post(
                "/generate", json=_body("w1 w2", adapter), headers={ADAPTER_HEADER: adapter}
            )
            holder[adapter] = response.headers[REPLICA_HEADER]
            time.sleep(1.5)
        seen = defaultdict(set)
        for seed in range(4):
            for adapter in ADAPTERS:
                response = client.post(
                    "/generate", json=_body(prompt(seed), adapter), headers={ADAPTER_HEADER: adapter}
                )
                _answer(response)
                seen[adapter].add(response.headers[REPLICA_HEADER])
        assert {a: {r} for a, r in holder.items()} == dict(seen), (
            "requests left the replica holding their adapter"
        )
        # A new adapter goes to the replica holding the fewest, so with two replicas both get some.
        assert len(set(holder.values())) == 2, f"one replica took every adapter: {holder}"
