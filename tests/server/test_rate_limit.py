"""`--rate-limit`: token buckets per API key, 429 with Retry-After, on an injectable clock (no test sleeps)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.errors import InvalidInputError, RateLimitedError
from server.ratelimit import RateLimiter, caller_identity, parse_rates
from server.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_format() -> None:
    (rate,) = parse_rates("600/minute")
    assert (rate.amount, rate.window_s, rate.per_second) == (600, 60.0, 10.0)
    assert [(r.amount, r.window_s) for r in parse_rates("500 per 10 seconds; 10000/day")] == [
        (500, 10.0),
        (10000, 86400.0),
    ]
    with pytest.raises(ValueError, match=r"give tokens per window, e\.g\. '20000/minute'"):
        parse_rates("fast")
    with pytest.raises(ValidationError, match="is not a rate"):
        Settings(rate_limit="100 tokens")


def test_bucket_refills_with_the_clock() -> None:
    clock = Clock()
    limiter = RateLimiter(parse_rates("60/minute"), clock=clock)  # 1 token per second
    limiter.charge(50, caller="a")
    with pytest.raises(RateLimitedError) as refused:
        limiter.charge(20, caller="a")  # 10 left: 10 more seconds needed
    assert refused.value.headers == {"Retry-After": "10"}
    limiter.charge(60, caller="b")  # another caller has its own bucket
    clock.now += 9
    with pytest.raises(RateLimitedError):
        limiter.charge(20, caller="a")  # a refused request took nothing: 19 left
    clock.now += 1
    limiter.charge(20, caller="a")
    with pytest.raises(InvalidInputError, match="more than the rate limit of 60 per 1 minute"):
        limiter.charge(61, caller="c")
    limiter.charge(10**6)  # outside a request (no caller): no limit


def test_every_rate_must_have_room() -> None:
    clock = Clock()
    limiter = RateLimiter(parse_rates("100/minute; 150/hour"), clock=clock)
    limiter.charge(100, caller="a")
    clock.now += 60  # the minute bucket is full again, the hour bucket has 50 + 2.5
    with pytest.raises(RateLimitedError) as refused:
        limiter.charge(60, caller="a")
    assert refused.value.headers == {"Retry-After": "180"}  # 7.5 tokens short at 150 per hour
    limiter.charge(52, caller="a")


def test_caller_is_the_key_when_keyed_else_the_address() -> None:
    scope = {"headers": [(b"authorization", b"Bearer k1")], "client": ("10.0.0.7", 5000)}
    other = {"headers": [(b"authorization", b"Bearer k2")], "client": ("10.0.0.7", 5001)}
    assert caller_identity(scope, keyed=True) != caller_identity(other, keyed=True)
    assert "k1" not in caller_identity(scope, keyed=True)  # a hash, never the key itself
    assert caller_identity(scope, keyed=False) == caller_identity(other, keyed=False) == "client:10.0.0.7"


def test_api_answers_429_with_retry_after_per_key(serve, llama_dir, causal_adapters) -> None:
    clock = Clock()
    settings = dict(
        base_model=str(llama_dir),
        adapters=[f"lora4={causal_adapters['lora4']}"],
        api_key="k1",
        admin_key="k2",
        rate_limit="40/minute",  # 2/3 token per second
    )
    with serve(**settings) as client:
        client.app.state.swapyard.rate_limiter.clock = clock
        user = {"Authorization": "Bearer k1"}
        body = {"model": "lora4", "prompt": "w1 w2 w3 w4 w5", "max_tokens": 10, "temperature": 0}  # costs 15
        for _ in range(2):
            assert client.post("/v1/completions", json=body, headers=user).status_code == 200
        refused = client.post("/v1/completions", json=body, headers=user)
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "8"  # 10 left, 5 more at 2/3 per second: 7.5 s
        assert refused.json()["error_type"] == "rate_limited"
        assert "has room again in 8 s" in refused.json()["error"]
        stream = client.post("/v1/completions", json={**body, "stream": True}, headers=user)
        assert stream.status_code == 429 and stream.headers["retry-after"] == "8"
        gen = client.post(
            "/generate", json={"inputs": "w1", "parameters": {"max_new_tokens": 10}}, headers=user
        )
        assert gen.status_code == 429  # every route charges the same bucket
        admin = {"Authorization": "Bearer k2"}
        assert client.post("/v1/completions", json=body, headers=admin).status_code == 200  # its own bucket
        ten = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10"
        assert (
            client.post("/v1/embeddings", json={"model": "lora4", "input": ten}, headers=user).status_code
            == 200
        )
        emb = client.post("/v1/embeddings", json={"model": "lora4", "input": "w1"}, headers=user)
        assert (
            emb.status_code == 429 and emb.headers["retry-after"] == "2"
        )  # the 10 input tokens took the rest
        clock.now += 23  # 15.3 tokens back
        assert client.post("/v1/completions", json=body, headers=user).status_code == 200
        too_big = client.post("/v1/completions", json={**body, "max_tokens": 36}, headers=user)
        assert too_big.status_code == 422 and "--rate-limit" in too_big.json()["error"]
        metrics = client.get("/metrics").text
        assert 'swapyard_rejected_requests_total{reason="rate_limited"} 4.0' in metrics
