"""Backend choice (argument, SWAPYARD_KERNELS, auto) and argument validation of the public ops."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import (
    BackendError,
    IA3Pool,
    LoraPool,
    ShapeError,
    build_decode_meta,
    build_prefill_meta,
    ia3_scale_output,
    lora_apply,
    lora_expand,
    lora_shrink,
    resolve_backend,
)
from kernels import triton_lora as tk

CPU = torch.device("cpu")


def test_auto_picks_the_reference_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWAPYARD_KERNELS", raising=False)
    assert resolve_backend(CPU) == "torch"
    monkeypatch.setenv("SWAPYARD_KERNELS", "auto")
    assert resolve_backend(CPU) == "torch"


def test_cuda_auto_picks_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWAPYARD_KERNELS", raising=False)
    assert resolve_backend(torch.device("cuda", 0)) == "triton"  # resolution only, nothing runs
    monkeypatch.setenv("SWAPYARD_KERNELS", "torch")
    assert resolve_backend(torch.device("cuda", 0)) == "torch"


def test_env_var_forces_a_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWAPYARD_KERNELS", "triton")
    if tk.INTERPRETED:
        assert resolve_backend(CPU) == "triton"
    assert resolve_backend(CPU, "torch") == "torch"  # the argument wins over the environment
    monkeypatch.setenv("SWAPYARD_KERNELS", " Torch ")
    assert resolve_backend(CPU) == "torch"


def test_env_var_routes_the_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(tk, "lora_shrink", lambda x, w, meta, out: calls.append("triton") or out)
    pool = LoraPool.from_adapters([(torch.ones(2, 8), torch.ones(4, 2), 1.0)], dtype=torch.float32)
    meta = build_decode_meta([0])
    monkeypatch.setenv("SWAPYARD_KERNELS", "triton")
    monkeypatch.setattr(tk, "INTERPRETED", True)
    lora_shrink(torch.ones(1, 8), pool, meta)
    monkeypatch.setenv("SWAPYARD_KERNELS", "torch")
    u = lora_shrink(torch.ones(1, 8), pool, meta)
    assert calls == ["triton"] and u[0, :2].tolist() == [8.0, 8.0]


def test_bad_backend_names_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWAPYARD_KERNELS", "cuda")
    with pytest.raises(BackendError, match=r"unknown kernels backend 'cuda'.*auto, triton or torch"):
        resolve_backend(CPU)


def test_forced_triton_on_cpu_without_interpreter_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tk, "INTERPRETED", False)
    with pytest.raises(BackendError, match=r"needs CUDA tensors.*TRITON_INTERPRET=1"):
        resolve_backend(CPU, "triton")


@pytest.fixture
def pool() -> LoraPool:
    return LoraPool.from_adapters(
        [(torch.ones(2, 8), torch.ones(4, 2), 1.0), None], dtype=torch.float32, rank_capacity=4
    )


def test_validation_errors(pool: LoraPool) -> None:
    meta = build_prefill_meta([0, -1], [2, 1])
    x, y = torch.ones(3, 8), torch.zeros(3, 4)
    with pytest.raises(ShapeError, match=r"x must be \(T, 8\)"):
        lora_shrink(torch.ones(3, 7), pool, meta)
    with pytest.raises(ShapeError, match="x has 2 tokens but the batch metadata has 3"):
        lora_shrink(torch.ones(2, 8), pool, meta)
    with pytest.raises(ShapeError, match="floating"):
        lora_shrink(torch.ones(3, 8, dtype=torch.int64), pool, meta)
    with pytest.raises(ShapeError, match="batch uses slot 5 but the pool has 2 slots"):
        lora_apply(y, x, pool, build_prefill_meta([5, 0], [2, 1]))
    with pytest.raises(ShapeError, match=r"u must be float32 \(3, 4\)"):
        lora_expand(y, torch.zeros(3, 4, dtype=torch.float16), pool, meta)
    with pytest.raises(ShapeError, match=r"u must be float32 \(3, 4\)"):
        lora_shrink(x, pool, meta, out=torch.zeros(3, 2))
    with pytest.raises(ShapeError, match="cannot be viewed"):
        lora_apply(torch.zeros(2, 5, 4)[:, :3], torch.ones(6, 8), pool, build_prefill_meta([0, -1], [4, 2]))
    ia3 = IA3Pool(4, budget_bytes=1024, num_slots=1, dtype=torch.float32)
    with pytest.raises(ShapeError, match="batch uses slot 5 but the pool has 1 slots"):
        ia3_scale_output(y, ia3, build_prefill_meta([5, 0], [2, 1]))


def test_public_api_is_exported() -> None:
    for name in kernels.__all__:
        assert hasattr(kernels, name), name
