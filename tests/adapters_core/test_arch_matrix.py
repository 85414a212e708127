"""The architecture matrix (issue 15): on every family, every method, one mixed batch equals PEFT row by row.

Per family (tests/arch_configs.py) real PEFT makes one adapter of each method it supports there, with perturbed
weights (arch_matrix.py); one `MultiAdapterModel` serves them all. A padded batch with one row per served adapter,
a base row and repeats, in shuffled order, must give every row exactly what PEFT gives that row alone on its
unpadded tokens (whole logits tensors, ≤ 1e-4 in float32); greedy generation of every row must equal PEFT's greedy
decoding of that row alone (causal and seq2seq families). A cell that `EXPECTED` marks refused must be refused
by `add` with an error that says why — never served silently wrong. The docs table is checked against
`EXPECTED` (test_docs_table_is_current), so the page says what these tests prove.
"""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path

import peft
import pytest
import torch
from arch_configs import FAMILIES, VOCAB, Family
from arch_matrix import (
    HAND_WRITTEN,
    METHODS,
    EncoderPrefixForward,
    expected,
    method_configs,
    perturb,
    render_table,
)
from paged_helpers import GreedyEngine
from safetensors.torch import load_file

from adapters_core.config import AdapterConfig
from adapters_core.errors import AdapterError
from adapters_core.multi import MultiAdapterModel

TOL = 1e-4
LENGTH, NEW, DECODER = 7, 4, 4
DOCS = Path(__file__).resolve().parents[2] / "docs" / "architectures.md"


class Served:
    """One family: PEFT oracles per method, the MultiAdapterModel serving them, and what `add` refused."""

    def __init__(self, fam: Family, root: Path) -> None:
        warnings.simplefilter("ignore")
        self.fam, self.root = fam, root
        self.oracles: dict[str | None, torch.nn.Module] = {None: fam.build()}
        self.multi = MultiAdapterModel(fam.build())
        self.refused: dict[str, str] = {}
        for i, (method, cfg) in enumerate(method_configs(fam).items()):
            pm = peft.get_peft_model(fam.build(), cfg)
            perturb(pm, seed=100 + i)
            pm.eval().save_pretrained(root / method)
            try:
                self.multi.add(method, root / method)
            except Exception as e:  # checked against EXPECTED by test_cells_are_served_or_refused
                self.refused[method] = f"{type(e).__name__}: {e}"
                continue
            if expected(fam.name, method) == HAND_WRITTEN:  # PEFT cannot run it: the hand-written forward
                table = load_file(root / method / "adapter_model.safetensors")["prompt_embeddings"]
                pm = EncoderPrefixForward(pm.base_model, table, cfg.num_virtual_tokens)
            self.oracles[method] = pm

    @property
    def served(self) -> list[str]:
        return [m for m in self.oracles if m is not None]

    def row_names(self, seed: int) -> list[str | None]:
        """Every served adapter and the base, plus three repeats, shuffled."""
        rng = random.Random(seed)
        names: list[str | None] = [*self.served, None]
        names += [rng.choice(names) for _ in range(3)]
        rng.shuffle(names)
        return names


@pytest.fixture(scope="module", params=list(FAMILIES))
def served(request, tmp_path_factory) -> Served:
    return Served(FAMILIES[request.param], tmp_path_factory.mktemp(request.param))


def padded_batch(fam: Family, rows: int, seed: int) -> dict[str, torch.Tensor]:
    """Rows of random lengths 3..LENGTH (row 0 full): left-padded for causal LMs, right-padded otherwise."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (rows, LENGTH), generator=g)
    mask = torch.zeros(rows, LENGTH, dtype=torch.long)
    for r in range(rows):
        n = LENGTH if r == 0 else int(torch.randint(3, LENGTH + 1, (1,), generator=g))
        if fam.kind == "causal":
            mask[r, LENGTH - n :] = 1
        else:
            mask[r, :n] = 1
    out = {"input_ids": ids * mask, "attention_mask": mask}
    if fam.kind == "seq2seq":
        dec = torch.randint(3, VOCAB, (rows, DECODER), generator=g)
        dec[:, 0] = fam.build().config.decoder_start_token_id
        out["decoder_input_ids"] = dec
    return out


def row_alone(inputs: dict[str, torch.Tensor], r: int) -> dict[str, torch.Tensor]:
    keep = inputs["attention_mask"][r].bool()
    out = {
        "input_ids": inputs["input_ids"][r : r + 1, keep],
        "attention_mask": inputs["attention_mask"][r : r + 1, keep],
    }
    if "decoder_input_ids" in inputs:
        out["decoder_input_ids"] = inputs["decoder_input_ids"][r : r + 1]
    return out


@torch.no_grad()
def oracle(served: Served, name: str | None, one: dict[str, torch.Tensor]) -> torch.Tensor:
    """PEFT's logits for one row alone; a causal LM's leading virtual positions (prompt methods) cut off."""
    out = served.oracles[name](**one).logits
    return out[:, -one["input_ids"].shape[1] :] if served.fam.kind == "causal" else out


def test_cells_are_served_or_refused(served: Served) -> None:
    """Every cell is what EXPECTED (and so the docs table) says: served, or refused with its reason."""
    fam = served.fam.name
    for method in METHODS:
        want = expected(fam, method)
        if want.startswith("n/a"):
            assert method not in served.refused and method not in served.oracles
        elif want.startswith("exact"):
            assert method in served.oracles, served.refused.get(method)
        else:
            reason = want.split('"')[1] if '"' in want else want
            assert reason in served.refused.get(method, "<served>"), (method, served.refused.get(method))
            # parse() — what a store validates uploads with — refuses it too, before anything is loaded
            directory = served.root / method
            state = load_file(directory / "adapter_model.safetensors")
            with pytest.raises(AdapterError, match=re.escape(reason)):
                served.multi.parse(AdapterConfig.from_pretrained(str(directory)), state)


@torch.no_grad()
def test_mixed_batch_equals_peft_per_row(served: Served) -> None:
    names = served.row_names(seed=1)
    inputs = padded_batch(served.fam, len(names), seed=2)
    logits = served.multi(**inputs, adapter_names=names).logits
    worst: dict[str | None, float] = {}
    for r, name in enumerate(names):
        one = row_alone(inputs, r)
        mine = logits[r : r + 1]
        if served.fam.kind == "causal":
            mine = mine[:, inputs["attention_mask"][r].bool()]
        want = oracle(served, name, one)
        assert mine.shape == want.shape, (name, mine.shape, want.shape)
        worst[name] = max(worst.get(name, 0.0), float((mine - want).abs().max()))
        if name is not None:  # the adapter changes its row, or the parity proves nothing
            assert float((want - oracle(served, None, one)).abs().max()) > 1e-3, name
    assert max(worst.values()) <= TOL, worst


@torch.no_grad()
def test_classify_equals_peft_per_row(served: Served) -> None:
    if served.fam.kind != "encoder":
        pytest.skip("classify() serves sequence classifiers")
    names = served.row_names(seed=3)
    inputs = padded_batch(served.fam, len(names), seed=4)
    rows = [ids[m.bool()].tolist() for ids, m in zip(inputs["input_ids"], inputs["attention_mask"])]
    got = served.multi.classify(rows, names)
    for r, name in enumerate(names):
        want = oracle(served, name, row_alone(inputs, r))[0]
        assert float((got[r] - want).abs().max()) <= TOL, (r, name)


@torch.no_grad()
def greedy_alone(served: Served, name: str | None, one: dict[str, torch.Tensor]) -> list[int]:
    """PEFT's greedy decoding of one row by repeated full forwards; `pad` after an EOS."""
    model, cfg = served.oracles[name], served.oracles[None].config
    eos, pad = cfg.eos_token_id, cfg.pad_token_id
    seq = torch.tensor([[cfg.decoder_start_token_id]]) if served.fam.kind == "seq2seq" else one["input_ids"]
    new: list[int] = []
    for _ in range(NEW):
        if eos in new:
            new.append(pad)
            continue
        if served.fam.kind == "seq2seq":
            logits = model(**{**one, "decoder_input_ids": seq}).logits
        else:
            logits = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits
        new.append(int(logits[0, -1].argmax()))
        seq = torch.cat([seq, torch.tensor([[new[-1]]])], dim=1)
    return new


@torch.no_grad()
def test_greedy_generation_equals_peft_per_row(served: Served) -> None:
    if served.fam.kind == "encoder":
        pytest.skip("sequence classifiers do not generate")
    names = served.row_names(seed=5)
    inputs = padded_batch(served.fam, len(names), seed=6)
    inputs.pop("decoder_input_ids", None)
    got = served.multi.generate(**inputs, adapter_names=names, max_new_tokens=NEW, do_sample=False)
    start = 1 if served.fam.kind == "seq2seq" else LENGTH
    pad = served.oracles[None].config.pad_token_id
    for r, name in enumerate(names):
        mine = got[r, start:].tolist()
        mine += [pad] * (NEW - len(mine))
        assert mine == greedy_alone(served, name, row_alone(inputs, r)), (r, name)


def test_docs_table_is_current() -> None:
    """docs/architectures.md carries render_table() verbatim (regenerate with arch_matrix.py)."""
    assert render_table() in DOCS.read_text(), (
        "docs/architectures.md is stale: paste `arch_matrix.py`'s output"
    )


@torch.no_grad()
def test_rows_joining_mid_decode_equal_peft(served: Served) -> None:
    """The serving engine's steps (`paged_step`): half the rows prefill and decode, the rest join two steps later
    (prefilled beside the running decodes) and row 0 leaves early, its blocks going back; every row's greedy
    tokens still equal PEFT's for that row alone."""
    if served.fam.kind == "encoder":
        pytest.skip("sequence classifiers do not generate")
    names = served.row_names(seed=7)
    inputs = padded_batch(served.fam, len(names), seed=8)
    prompts = [ids[m.bool()].tolist() for ids, m in zip(inputs["input_ids"], inputs["attention_mask"])]
    half = len(prompts) // 2
    eos = served.oracles[None].config.eos_token_id
    engine = GreedyEngine(served.multi, eos)
    limits = [3 if r == 0 else NEW for r in range(len(prompts))]  # row 0 is done after 3 tokens: it leaves
    engine.admit(list(range(half)), prompts[:half], names[:half], limits[:half])
    for step in range(NEW + 2):
        if step == 2:  # the other rows join, with their own prefixes, virtual tokens and stream lengths
            rest = list(range(half, len(prompts)))
            engine.admit(rest, prompts[half:], names[half:], limits[half:])
        if engine.running:
            engine.step()
    for r, name in enumerate(names):
        want = greedy_alone(served, name, row_alone(inputs, r))[: limits[r]]
        upto = want.index(eos) + 1 if eos in want else len(want)
        assert engine.tokens[r] == want[:upto], (r, name, engine.tokens[r], want)
