"""The paged engine's knobs: `--max-batch-tokens`, `--kv-cache-bytes`, `--kv-block-size` (flags, SWAPYARD_*
variables, validation) and how the KV pool is sized from them (engine/paged.py)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from server.budget import CPU_KV_CACHE_BYTES
from server.engine.paged import CPU_BATCH_TOKENS, CPU_PREFILL_WHILE_DECODING, GPU_BATCH_TOKENS, PagingConfig
from server.settings import Settings
from swapyard.serve_cli import parse_settings


def test_flags_and_environment_reach_the_paging_config(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = PagingConfig.from_settings(Settings())
    assert defaults == PagingConfig(None, None, 16, None)
    assert defaults.batch_tokens(torch.device("cpu")) == CPU_BATCH_TOKENS
    assert defaults.batch_tokens(torch.device("cuda")) == GPU_BATCH_TOKENS
    assert defaults.prefill_tokens_while_decoding(torch.device("cpu")) == CPU_PREFILL_WHILE_DECODING
    assert defaults.prefill_tokens_while_decoding(torch.device("cuda")) is None
    monkeypatch.setenv("SWAPYARD_KV_CACHE_BYTES", "1048576")
    monkeypatch.setenv("SWAPYARD_MAX_BATCH_TOKENS", "64")
    monkeypatch.setenv("SWAPYARD_MAX_PREFILL_TOKENS_WHILE_DECODING", "5")
    flags = ["--kv-block-size", "8", "--max-batch-tokens", "32", "--max-prefill-tokens-while-decoding", "16"]
    settings = parse_settings(["--base-model", "m", *flags])
    assert PagingConfig.from_settings(settings) == PagingConfig(1 << 20, 32, 8, 16)  # flag > env > default
    assert PagingConfig.from_settings(parse_settings(["--base-model", "m"])).prefill_while_decoding == 5


@pytest.mark.parametrize(
    "field", ["kv_cache_bytes", "max_batch_tokens", "kv_block_size", "max_prefill_tokens_while_decoding"]
)
def test_non_positive_values_are_refused(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: 0})


class FakeModel:
    reserved_blocks = 1

    def kv_block_bytes(self, block_size: int) -> int:
        return 1000 * block_size


def test_pool_size_from_bytes_and_the_default_cap() -> None:
    model, cpu = FakeModel(), torch.device("cpu")
    assert PagingConfig(kv_cache_bytes=160_000, block_size=16).num_blocks(model, cpu, 32, 2048) == 10
    # Default on the CPU: 1 GiB, capped at twice what 4 rows of 100 positions need (7 blocks each) + reserved.
    assert PagingConfig(block_size=16).num_blocks(model, cpu, 4, 100) == 1 + 2 * 4 * 7
    assert PagingConfig(block_size=16).num_blocks(model, cpu, 10**6, 2048) == CPU_KV_CACHE_BYTES // 16_000
    with pytest.raises(ValueError, match="--kv-cache-bytes"):
        PagingConfig(kv_cache_bytes=16_000, block_size=16).num_blocks(model, cpu, 32, 2048)
