"""Issue 16: a row's greedy tokens and its logits, bit for bit, do not depend on the rows prefilled beside it.

A tiny Llama serves LoRA adapters of ranks 3, 4 and 8 (q/k/v and MLP targets: sibling groups), IA3 and the
base. One row is prefilled alone, then decodes alone; again with 1-3 new rows (random adapters, prompts of
2-12 tokens) prefilled beside every one of its decode steps (a mixed paged step: its decode token packed
with their prompt chunks, at a random place among them). Every step's logits must be equal, bit for bit.

The base model's own float32 GEMMs are not batch-invariant on a CPU (MKL runs a 1-row product as a GEMV and
blocks 5+ rows otherwise: a row's bits change with the step's token count), which is outside the adapter
path; this test replaces `F.linear` with a row-wise product (a batch of one-row matmuls, as the reference
kernels compute decode rows), so what it measures is the adapter path: LoRA, IA3 and the sibling groups.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import peft
import pytest
import torch
import torch.nn.functional as F
from paged_helpers import GreedyEngine
from tiny_models import VOCAB, perturb_adapter_weights, tiny_llama

from adapters_core.multi import MultiAdapterModel, fused

ATTN_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CONFIGS = {
    "lora4": peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "lora8": peft.LoraConfig(r=8, lora_alpha=8, target_modules=ATTN_MLP),
    "lora3": peft.LoraConfig(r=3, lora_alpha=6, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"]),
    "ia3": peft.IA3Config(
        target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]
    ),
}
NAMES: list[str | None] = [None, *CONFIGS]


def rowwise_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear as one (1, in) @ (in, out) problem per token: the same bits for a token in any batch."""
    flat = x.reshape(-1, x.shape[-1])  # (T, in)
    out = torch.bmm(flat[:, None, :], weight.t()[None].expand(flat.shape[0], -1, -1))[:, 0]  # (T, out)
    out = out if bias is None else out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> MultiAdapterModel:
    warnings.simplefilter("ignore")
    root: Path = tmp_path_factory.mktemp("invariance")
    model = MultiAdapterModel(tiny_llama())
    for i, (name, cfg) in enumerate(CONFIGS.items()):
        cfg.task_type = "CAUSAL_LM"
        pm = peft.get_peft_model(tiny_llama(), cfg)
        perturb_adapter_weights(pm, seed=i)
        pm.save_pretrained(root / name)
        model.add(name, root / name)
    return model


@torch.no_grad()
def decode(multi: MultiAdapterModel, name: str | None, steps: int, mates: bool) -> tuple[list, list]:
    """The row's tokens and per-step logits; `mates`: new rows are prefilled beside each decode step (and
    leave after it: their first token), at a random place in the step."""
    engine = GreedyEngine(multi, eos=-1)
    engine.admit([0], [[5, 9, 33, 7, 100]], [name], [steps])
    engine.step()  # the row's prefill, alone in both runs
    rng, rid = random.Random(7), 1
    while 0 in engine.running:
        if mates:
            ids = list(range(rid, rid + rng.randint(1, 3)))
            rid += len(ids)
            prompts = [[rng.randrange(3, VOCAB) for _ in range(rng.randint(2, 12))] for _ in ids]
            engine.admit(ids, prompts, [rng.choice(NAMES) for _ in ids], [1] * len(ids))
            engine.running.remove(0)
            engine.running.insert(rng.randrange(len(engine.running) + 1), 0)
        engine.step()
    return engine.tokens[0], engine.logits[0]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_row_decodes_bit_identically_alone_and_beside_prefills(
    multi: MultiAdapterModel, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "triton":
        pytest.importorskip("triton")
        from kernels import triton_lora

        if not triton_lora.INTERPRETED:
            pytest.skip("CPU Triton tests need TRITON_INTERPRET=1")
    monkeypatch.setenv("SWAPYARD_KERNELS", backend)
    monkeypatch.setattr(F, "linear", rowwise_linear)
    shrinks = []
    shrink_slices = fused.lora_shrink_slices
    monkeypatch.setattr(
        fused, "lora_shrink_slices", lambda *a, **k: shrinks.append(1) or shrink_slices(*a, **k)
    )
    steps = 6 if backend == "torch" else 3  # the interpreter is slow
    for name in NAMES:
        alone_tokens, alone_logits = decode(multi, name, steps, mates=False)
        tokens, logits = decode(multi, name, steps, mates=True)
        assert tokens == alone_tokens, name
        for step, (a, b) in enumerate(zip(alone_logits, logits)):
            assert torch.equal(a, b), f"{name}: step {step} logits differ by {float((a - b).abs().max()):.3g}"
    assert bool(shrinks) == (backend == "triton")  # sibling groups share a shrink on Triton only (fused.py)
