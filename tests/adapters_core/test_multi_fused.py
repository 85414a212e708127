"""Sibling groups (adapters_core/multi/fused.py): q/k/v and gate/up share one shrink launch on Triton.

Run under TRITON_INTERPRET=1 with SWAPYARD_KERNELS=triton: a paged prefill step (segment kernels) and decode
steps (one token per row) through the fused path must equal the unfused path and every row alone in real PEFT.
"""

from __future__ import annotations

import peft
import pytest
import torch
from tiny_models import BUILDERS, perturb_adapter_weights

import adapters_core.multi.fused as fused
from adapters_core.multi import MultiAdapterModel
from adapters_core.paged import SeqChunk, StepPlan

pytest.importorskip("triton")
from kernels import triton_lora

pytestmark = pytest.mark.skipif(not triton_lora.INTERPRETED, reason="needs TRITON_INTERPRET=1 on CPU")

ADAPTERS = {  # all-linear, q/v only (k's slice absent from the group), an MLP with per-module ranks
    "all": dict(r=8, lora_alpha=16, target_modules="all-linear"),
    "qv": dict(r=4, target_modules=["q_proj", "v_proj"]),
    "mlp": dict(r=2, target_modules=["gate_proj", "up_proj", "k_proj"], rank_pattern={"up_proj": 6}),
}
PROMPTS = [[5, 6, 7, 8, 9], [7, 8, 9], [11, 12, 13, 14], [3, 4]]
NAMES = ["all", "qv", None, "mlp"]
STEPS = [[20, 21, 22, 23], [24, 25, 26, 27]]  # fixed decode tokens: the same inputs on both paths


@pytest.fixture(scope="module")
def peft_models(tmp_path_factory) -> dict[str, tuple[str, torch.nn.Module]]:
    out = {}
    for i, (name, kwargs) in enumerate(ADAPTERS.items()):
        pm = peft.get_peft_model(BUILDERS["llama"](), peft.LoraConfig(task_type="CAUSAL_LM", **kwargs))
        perturb_adapter_weights(pm, seed=i + 1)
        path = tmp_path_factory.mktemp(name)
        pm.save_pretrained(path)
        out[name] = (str(path), pm.eval())
    return out


def run(multi: MultiAdapterModel) -> list[torch.Tensor]:
    """Logits (B, V) of the prefill step and of every decode step: paged steps (one forward each) over a fresh
    KV pool, every row's blocks its own."""
    block = 4
    per_row = -(-max(len(p) + len(STEPS) for p in PROMPTS) // block)
    multi.init_kv_cache(num_blocks=multi.reserved_blocks + per_row * len(PROMPTS), block_size=block)
    tables = [[multi.reserved_blocks + r * per_row + i for i in range(per_row)] for r in range(len(PROMPTS))]
    with torch.no_grad():
        chunks = [SeqChunk(r, NAMES[r], PROMPTS[r], 0, tables[r]) for r in range(len(PROMPTS))]
        outs = [multi.paged_step(StepPlan(chunks))]
        for i, tokens in enumerate(STEPS):
            chunks = [
                SeqChunk(r, NAMES[r], [tokens[r]], len(PROMPTS[r]) + i, tables[r])
                for r in range(len(PROMPTS))
            ]
            outs.append(multi.paged_step(StepPlan(chunks)))
    return outs


def test_fused_siblings_equal_unfused_and_peft(peft_models, monkeypatch) -> None:
    monkeypatch.setenv("SWAPYARD_KERNELS", "triton")
    multi = MultiAdapterModel(BUILDERS["llama"]())
    for name, (path, _) in peft_models.items():
        multi.add(name, path)
    layers = multi.model.config.num_hidden_layers
    assert len(multi._sibling_groups) == 2 * layers  # q/k/v and gate/up of every block

    launches: list[int] = []
    real = fused.lora_shrink_slices

    def counting(x, pools, meta, **kw):
        launches.append(len(pools))
        return real(x, pools, meta, **kw)

    monkeypatch.setattr(fused, "lora_shrink_slices", counting)
    got = run(multi)
    # Every forward: one shared shrink per group (q/k/v: 3 slices, gate/up: 2), never a fall-back.
    assert launches == [3, 2] * layers * (1 + len(STEPS))
    assert all(g.enabled for g in multi._sibling_groups)

    for g in multi._sibling_groups:
        g.enabled = False
    launches.clear()
    want = run(multi)
    assert launches == []
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)

    for row, name in enumerate(NAMES):  # every row alone in PEFT, on its whole sequence
        ids = torch.tensor([PROMPTS[row] + [s[row] for s in STEPS]])
        ref_model = BUILDERS["llama"]() if name is None else peft_models[name][1]
        with torch.no_grad():
            ref = ref_model(input_ids=ids).logits[0, len(PROMPTS[row]) - 1 :]  # (1 + steps, V)
        mine = torch.stack([out[row] for out in got])
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-4)
        if name is not None:
            base = BUILDERS["llama"]()(input_ids=ids).logits[0, len(PROMPTS[row]) - 1 :].detach()
            assert float((mine - base).abs().max()) > 1e-2  # the adapter changes the row


def test_siblings_with_other_inputs_stop_fusing_and_stay_exact(peft_models, monkeypatch) -> None:
    """A member that reads another input than its sibling (as k/v in cross-attention) turns the group off;
    every output is still its own module's."""
    monkeypatch.setenv("SWAPYARD_KERNELS", "triton")
    multi = MultiAdapterModel(BUILDERS["llama"]())
    multi.add("all", peft_models["all"][0])
    attn = multi.model.model.layers[0].self_attn
    group = attn.q_proj.group
    x = torch.randn(2, 3, attn.q_proj.in_features)
    other = torch.randn(2, 3, attn.q_proj.in_features)
    slot = multi.adapters["all"].slot
    with torch.no_grad(), multi.rows([slot, slot]):
        fused_q = attn.q_proj(x)  # computes the group's shrink for q, k and v of x
        k_other = attn.k_proj(other)  # another input: its own path, and the group stops fusing
        assert not group.enabled
        assert attn.v_proj(x) is not None and not group.enabled
        torch.testing.assert_close(attn.q_proj(x), fused_q, rtol=1e-6, atol=1e-6)  # unfused from here on
        assert torch.equal(attn.k_proj(other), k_other)
        base_k = attn.k_proj.base_layer(other)
        assert float((k_other - base_k).abs().max()) > 1e-3  # k's own adapter applied to `other`


def test_inference_mode_runs_unfused_and_exact(peft_models, monkeypatch) -> None:
    """Inference tensors have no version counter, so the group cannot prove its siblings read unchanged
    values: under torch.inference_mode every member runs its own path (it used to raise)."""
    monkeypatch.setenv("SWAPYARD_KERNELS", "triton")
    multi = MultiAdapterModel(BUILDERS["llama"]())
    for name, (path, _) in peft_models.items():
        multi.add(name, path)
    want = run(multi)
    launches: list[int] = []
    real = fused.lora_shrink_slices
    monkeypatch.setattr(fused, "lora_shrink_slices", lambda *a, **kw: launches.append(1) or real(*a, **kw))
    with torch.inference_mode():
        got = run(multi)
    assert launches == []
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
