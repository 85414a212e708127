"""A request names its adapter by its public name and holds the version it runs on as a separate lease: the
engine runs the leased version, and an adapter without a lease is an error, never the base model."""

from __future__ import annotations

import asyncio

import pytest

from server.engine.types import ClassifyJob, GenerationRequest
from server.sampling import SamplingParams


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
