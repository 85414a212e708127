"""The engine's kernel warm-up sees every adapted linear layer's geometry (kernels/warmup.py compiles them)."""

from __future__ import annotations

from tiny_models import tiny_gpt2, tiny_llama
from torch import nn

from adapters_core.multi.layers import kernel_geometries, warm_up_kernels, weight_rows
from adapters_core.multi.model import MultiAdapterModel
from kernels import LoraGeometry


def test_geometries_cover_every_linear_layer() -> None:
    for build in (tiny_llama, tiny_gpt2):  # nn.Linear, and GPT-2's Conv1D (weights stored (in, out))
        base = build()
        shapes = {
            tuple(weight_rows(m).shape[::-1])
            for m in base.modules()
            if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"
        }
        grouped = {  # members of sibling groups (fused.py): GPT-2 has none (c_attn is one fused linear)
            tuple(weight_rows(m).shape[::-1])
            for name, m in base.named_modules()
            if name.rpartition(".")[2] in {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}
        }
        multi = MultiAdapterModel(base, rank_capacity=32)
        dtype = next(base.parameters()).dtype
        geometries = kernel_geometries(multi)
        assert {g._replace(sliced=False) for g in geometries} == {
            LoraGeometry(i, o, 32, dtype, dtype) for i, o in shapes
        }
        assert {(g.in_features, g.out_features) for g in geometries if g.sliced} == grouped
        assert (build is tiny_llama) == bool(grouped)


def test_warm_up_is_a_no_op_on_the_cpu() -> None:
    assert warm_up_kernels(MultiAdapterModel(tiny_llama()), 512) == 0
    assert warm_up_kernels(object(), 512) == 0
