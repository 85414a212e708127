"""A request names its adapter by its public name and holds the version it runs on as a separate lease: the
engine runs the leased version, and an adapter without a lease is an error, never the base model."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serve_helpers import prompt

from server.app import create_app
from server.engine.types import ClassifyJob, GenerationRequest
from server.sampling import SamplingParams
from server.settings import Settings
from server.store import ResidentKey


def _request(adapter: str | None) -> GenerationRequest:
    return GenerationRequest(input_ids=[1, 2], adapter=adapter, sampling=SamplingParams(), max_new_tokens=1)


def test_an_adapter_without_its_lease_is_an_error_never_the_base() -> None:
    assert _request(None).model_name is None  # the base model needs no lease
    with pytest.raises(RuntimeError, match="'fr' reached the engine without its lease"):
        _ = _request("fr").model_name
    loop = asyncio.new_event_loop()
    try:
        job = ClassifyJob([[1, 2]], "fr", loop.create_future(), loop)
        with pytest.raises(RuntimeError, match="without its lease"):
            _ = job.model_name
    finally:
        loop.close()


def test_a_queued_request_keeps_the_public_name_and_its_lease_apart(
    llama_dir: Path, causal_adapters: dict[str, Path]
) -> None:
    settings = Settings(base_model=str(llama_dir), adapters=[f"lora4={causal_adapters['lora4']}"])
    body = {"inputs": prompt(1), "parameters": {"adapter_id": "lora4", "max_new_tokens": 2}}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        engine: Any = client.app.state.swapyard.engine  # type: ignore[attr-defined]
        # Held: the request is queued (its lease taken) and cannot run, so it can be looked at.
        with ThreadPoolExecutor(1) as pool, engine.hold() as held:
            answer = pool.submit(client.post, "/generate", json=body)
            held.wait_queued(1)
            request = engine._waiting[0].request
            assert request.adapter == "lora4"  # the public name, as the client said it
            version = ResidentKey("lora4", engine.registry.info("lora4").content_hash)
            assert request.lease.key == version
            assert request.model_name == version.model_name and version.model_name in engine.model.adapters
        assert answer.result(timeout=120).status_code == 200
        metrics = client.get("/metrics").text
        assert 'swapyard_adapter_requests_total{adapter="lora4"} 1.0' in metrics
