"""The device memory of a GPU server, split in one place: KV cache, adapter pools, and what stays free.

With F bytes free on the device once the base's weights are loaded (adapter pools are made lazily, at the
first load, and the KV pool right after the base: both see the same F):

- KV cache (`--kv-cache-bytes` unset): half of F (`KV_FREE_SHARE`); the engine caps it further at what
  `--max-batch-size` rows of `--max-total-tokens` can use (engine/paged.py).
- Adapter pools (`--adapter-device-bytes` unset): a quarter of F (`ADAPTER_FREE_SHARE`), capped at what
  `--max-adapters` adapters of `--max-adapter-rank` on every linear layer but lm_head would take (more could
  never be used). The old fixed 256 MiB held about three all-linear rank-16 adapters of an 8B model; a
  quarter of an H100's F (~64 GiB after an 8B bf16 base) holds ~190.
- The rest (at least a quarter of F): activations, CUDA graphs, the allocator's slack.

On the CPU there is no "free device memory": fixed defaults (1 GiB of KV, 256 MiB of adapters).
`device_budgets` is a pure function of (F, geometry, limits), tested on the CPU with made-up F.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

KV_FREE_SHARE = 0.5
ADAPTER_FREE_SHARE = 0.25
CPU_KV_CACHE_BYTES = 1 << 30
CPU_ADAPTER_BYTES = 256 << 20
INDEX_BYTES = 8  # the pools' int64 slot tables


@dataclass(frozen=True)
class LoraGeometry:
    """What an adapter rank unit costs on this base: `split_width` elements (sum of in + out over the linear
    layers the pools split the budget over, lm_head excluded) of `dtype_bytes` each, in `modules` pools."""

    split_width: int
    dtype_bytes: int
    modules: int

    @classmethod
    def of(cls, base_model: Any) -> LoraGeometry:
        from adapters_core.multi import lora_split_width

        linear = [
            m for m in base_model.modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"
        ]
        dtype = next(base_model.parameters()).dtype
        return cls(
            lora_split_width(base_model),
            torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 2,
            len(linear),
        )


@dataclass(frozen=True)
class DeviceBudgets:
    adapter_bytes: int  # default of --adapter-device-bytes
    kv_bytes: int  # default of --kv-cache-bytes (before the engine's cap by rows)


def kv_default_bytes(free_bytes: int | None) -> int:
    return CPU_KV_CACHE_BYTES if free_bytes is None else int(free_bytes * KV_FREE_SHARE)


def device_budgets(
    free_bytes: int | None, geometry: LoraGeometry, *, max_adapters: int, max_rank: int
) -> DeviceBudgets:
    """The defaults for `free_bytes` free on the device after the base loaded (None: a CPU)."""
    kv = kv_default_bytes(free_bytes)
    if free_bytes is None:
        return DeviceBudgets(CPU_ADAPTER_BYTES, kv)
    tables = geometry.modules * max_adapters * (max_rank + 3) * INDEX_BYTES
    most = max_adapters * max_rank * geometry.split_width * geometry.dtype_bytes + tables
    return DeviceBudgets(min(int(free_bytes * ADAPTER_FREE_SHARE), most), kv)


def free_device_bytes(device: torch.device) -> int | None:
    """Bytes free on a CUDA device now; None on any other device."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)
