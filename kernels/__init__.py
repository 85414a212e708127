"""Segmented-gather ops that apply many adapters to one batch: a PyTorch reference and Triton kernels.

Use: keep one `LoraPool` / `IA3Pool` per adapted module, build one `BatchMeta` per forward from the rows'
slot ids, and call the ops below from each module's forward:

    pool = LoraPool(in_f, out_f, budget_bytes=64 << 20, num_slots=64, dtype=torch.bfloat16, device="cuda")
    pool.load(slot, lora_A.weight, lora_B.weight, scale)            # scale = lora_alpha / r
    meta = build_decode_meta(row_slots, device="cuda")              # or build_prefill_meta(slots, lengths)
    y = base_linear(x)                                              # x (T, in_f), y (T, out_f)
    lora_apply(y, x, pool, meta)                                    # in place; rows with slot -1 untouched

Serving: `warmup(geometries, max_batch_tokens=..., device=...)` compiles every Triton variant a batch can ask
for (`kernels.variants`), so none compiles mid-serving; decode outputs are batch-invariant (no split-K, and
decode runs per-token BGMV). `set_decode_policy("shared")` (or `SWAPYARD_SHARED_DECODE=1`) opts into the
shared-adapter decode kernels: faster when rows share adapters, not batch-invariant (kernels/variants.py).

Paged decode attention (`kernels.paged_attention`, `kernels.triton_paged_attention`): one query token per row
over the KV pool's blocks, read in place through block tables; Triton only (its torch path is
adapters_core/paged/attention.py's gather + SDPA), warmed up by `kernels.warmup.warmup_attention`.

Backends: Triton on CUDA tensors, the PyTorch reference elsewhere; `SWAPYARD_KERNELS=triton|torch|auto` or
`backend=` forces one. Triton is imported only when a Triton backend runs, so this package imports without it.
"""

from kernels.dispatch import (
    ENV_VAR,
    ia3_scale_input,
    ia3_scale_output,
    lora_apply,
    lora_expand,
    lora_shrink,
    resolve_backend,
)
from kernels.errors import BackendError, KernelError, PoolFullError, ShapeError, SlotError
from kernels.ia3_pool import IA3Pool, IA3Weights
from kernels.metadata import BatchMeta, build_decode_meta, build_prefill_meta
from kernels.pool import LoraPool, LoraWeights
from kernels.variants import LoraGeometry, Variant, decode_policy, set_decode_policy, variant_key
from kernels.warmup import warmup

__all__ = [
    "ENV_VAR",
    "BackendError",
    "BatchMeta",
    "IA3Pool",
    "IA3Weights",
    "KernelError",
    "LoraGeometry",
    "LoraPool",
    "LoraWeights",
    "PoolFullError",
    "ShapeError",
    "SlotError",
    "Variant",
    "build_decode_meta",
    "build_prefill_meta",
    "decode_policy",
    "ia3_scale_input",
    "ia3_scale_output",
    "lora_apply",
    "lora_expand",
    "lora_shrink",
    "resolve_backend",
    "set_decode_policy",
    "variant_key",
    "warmup",
]
