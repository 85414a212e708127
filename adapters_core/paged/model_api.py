"""The MultiAdapterModel methods of the paged contract (paged/plan.py), as functions of the model."""

from __future__ import annotations

from typing import Any

import torch

from .plan import StepPlan

RESERVED_BLOCKS = 1  # block 0: the scratch block padding slots write to


def support(model: Any) -> str | None:
    raise NotImplementedError("paged_support: being implemented (issue 16)")


def stream_prefix_length(model: Any, adapter: str | None) -> int:
    raise NotImplementedError("stream_prefix_length: being implemented (issue 16)")


def kv_block_bytes(model: Any, block_size: int) -> int:
    raise NotImplementedError("kv_block_bytes: being implemented (issue 16)")


def init_kv_cache(model: Any, num_blocks: int, block_size: int) -> None:
    raise NotImplementedError("init_kv_cache: being implemented (issue 16)")


def paged_step(model: Any, plan: StepPlan) -> torch.Tensor:
    raise NotImplementedError("paged_step: being implemented (issue 16)")
