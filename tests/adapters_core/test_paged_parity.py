"""paged_step (issue 16) equals PEFT row by row: every causal family the paged path accepts × every method it
serves (LLaMA-Adapter too where PEFT has it), rows of different adapters (and the base) packed in one stream, prompts prefilled in uneven chunks,
rows joining while others decode, blocks shuffled. At every step each row's logits equal PEFT's for that row
alone (whole (V,) tensors) and its greedy token is PEFT's."""

from __future__ import annotations

import random

import pytest
import torch
from arch_configs import FAMILIES, VOCAB
from paged_helpers import MiniEngine, Oracles

from adapters_core.paged import attention

TOL = 1e-4
NEW = 4
METHODS = ("LoRA", "DoRA", "AdaLoRA", "IA3", "prompt tuning", "P-tuning", "prefix tuning")
PAGED = [n for n, f in FAMILIES.items() if f.kind == "causal" and n not in ("falcon", "bloom")]


@pytest.fixture(scope="module", params=PAGED)
def oracles(request, tmp_path_factory) -> Oracles:
    fam = FAMILIES[request.param]
    methods = (*METHODS, "LLaMA-Adapter") if fam.llama_adapter else METHODS
    return Oracles(fam, tmp_path_factory.mktemp(request.param), methods)


def test_paged_support_says_which_families(oracles: Oracles) -> None:
    assert oracles.multi.paged_support() is None


@torch.no_grad()
def test_packed_steps_equal_peft_per_row(oracles: Oracles) -> None:
    _run_and_compare(oracles)


@torch.no_grad()
def test_tiled_decode_attention_equals_peft(oracles: Oracles, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode rows longer than KEY_TILE attend tile by tile (online softmax): with tiles of 4 keys every decode
    step of every row runs that path, prefixes, sliding windows and softcapping included."""
    if oracles.fam.name not in ("llama", "mistral", "gemma2"):
        pytest.skip(
            "the tiled path is checked on a full-attention, a sliding-window and a softcapping family"
        )
    monkeypatch.setattr(attention, "KEY_TILE", 4)
    _run_and_compare(oracles)


def _run_and_compare(oracles: Oracles) -> None:
    names: list[str | None] = [*oracles.methods, None, "LoRA", "prefix tuning", None]
    random.Random(1).shuffle(names)
    g = torch.Generator().manual_seed(2)
    prompts = [
        torch.randint(3, VOCAB, (int(torch.randint(2, 10, (1,), generator=g)),), generator=g).tolist()
        for _ in names
    ]
    engine = MiniEngine(oracles.multi, num_blocks=64, block_size=4, chunk_sizes=[3, 5, 2])
    got: dict[int, list[int]] = {r: [] for r in range(len(names))}
    checked = 0

    def on_logits(r: int, logits: torch.Tensor) -> int:
        nonlocal checked
        want = oracles.last_logits(names[r], prompts[r] + got[r])
        torch.testing.assert_close(logits, want, atol=TOL, rtol=0, msg=lambda m: f"row {r} ({names[r]}): {m}")
        token = int(logits.argmax())
        assert token == int(want.argmax()), (r, names[r])
        got[r].append(token)
        checked += 1
        return token

    step = 0
    while any(len(t) < NEW for t in got.values()):
        for r in range(len(names)):
            if r // 3 == step and r not in engine.rows:  # three rows join per step, while earlier ones decode
                engine.join(r, names[r], prompts[r])
        for r in [r for r, t in got.items() if len(t) >= NEW and r in engine.rows]:
            del engine.rows[r]  # finished rows leave
        engine.step(on_logits)
        step += 1
    assert checked == len(names) * NEW
