"""paged_step (issue 16) equals PEFT row by row: every causal family the paged path accepts × every method it
serves (LLaMA-Adapter too where PEFT has it), rows of different adapters (and the base) packed in one stream, prompts prefilled in uneven chunks,
rows joining while others decode, blocks shuffled. At every step each row's logits equal PEFT's for that row
alone (whole (V,) tensors) and its greedy token is PEFT's."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from arch_configs import FAMILIES, VOCAB, Family
from arch_matrix import expected
from paged_helpers import MiniEngine, Oracles, StepChecker, run_joining_rows

from adapters_core.paged import attention

TOL = 1e-4
NEW = 4
METHODS = ("LoRA", "DoRA", "AdaLoRA", "IA3", "prompt tuning", "P-tuning", "prefix tuning")

# Falcon's attention variants beside the matrix's Falcon-7B style one (multi-query, rotary, parallel attention):
# Falcon-40B style (new decoder architecture: grouped KV heads, two layer norms, rotary) and Falcon-RW style
# (ALiBi, one KV head per query head, sequential attention and MLP).
_FALCON, _BLOOM = FAMILIES["falcon"], FAMILIES["bloom"]
VARIANTS = {
    # BLOOM configured slow_but_exact: its attention sums the output projection slice by slice from the base
    # weight, so an adapter on that projection (targeted here) has no effect, in PEFT as in the paged step.
    "bloom_tp": dataclasses.replace(
        _BLOOM,
        name="bloom_tp",
        config={**_BLOOM.config, "pretraining_tp": 2, "slow_but_exact": True},
        attn=["query_key_value", "dense"],
    ),
    "falcon_new": dataclasses.replace(
        _FALCON,
        name="falcon_new",
        config={**_FALCON.config, "new_decoder_architecture": True, "num_kv_heads": 2},
    ),
    "falcon_alibi": dataclasses.replace(
        _FALCON,
        name="falcon_alibi",
        config={**_FALCON.config, "alibi": True, "multi_query": False, "parallel_attn": False},
    ),
}
ALL = {**FAMILIES, **VARIANTS}
PAGED = [n for n, f in ALL.items() if f.kind == "causal"]


def _methods(fam: Family) -> tuple[str, ...]:
    """The methods PEFT runs on `fam` (Falcon-7B's multi-query attention refuses prefix tuning, as PEFT does)."""
    methods = (*METHODS, "LLaMA-Adapter") if fam.llama_adapter else METHODS
    return tuple(m for m in methods if fam.name not in FAMILIES or expected(fam.name, m) == "exact")


@pytest.fixture(scope="module", params=PAGED)
def oracles(request, tmp_path_factory) -> Oracles:
    fam = ALL[request.param]
    return Oracles(fam, tmp_path_factory.mktemp(request.param), _methods(fam))


def test_paged_support_says_which_families(oracles: Oracles) -> None:
    assert oracles.multi.paged_support() is None


@torch.no_grad()
def test_packed_steps_equal_peft_per_row(oracles: Oracles) -> None:
    _run_and_compare(oracles)


@torch.no_grad()
def test_tiled_decode_attention_equals_peft(oracles: Oracles, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode rows longer than KEY_TILE attend tile by tile (online softmax): with tiles of 4 keys every decode
    step of every row runs that path, prefixes, sliding windows and softcapping included."""
    if oracles.fam.name not in ("llama", "mistral", "gemma2", "bloom", "falcon_alibi"):
        pytest.skip(
            "the tiled path is checked on a full-attention, a sliding-window, a softcapping and the ALiBi families"
        )
    monkeypatch.setattr(attention, "KEY_TILE", 4)
    _run_and_compare(oracles)


def _run_and_compare(oracles: Oracles) -> None:
    again = [m for m in ("LoRA", "prefix tuning") if m in oracles.methods]
    names: list[str | None] = [*oracles.methods, None, *again, None]
    random.Random(1).shuffle(names)
    g = torch.Generator().manual_seed(2)
    prompts = [
        torch.randint(3, VOCAB, (int(torch.randint(2, 10, (1,), generator=g)),), generator=g).tolist()
        for _ in names
    ]
    engine = MiniEngine(oracles.multi, num_blocks=64, block_size=4, chunk_sizes=[3, 5, 2])
    check = StepChecker(names, lambda r, got: oracles.last_logits(names[r], prompts[r] + got), TOL)
    run_joining_rows(engine, check, NEW, lambda r: engine.join(r, names[r], prompts[r]))
