"""MultiAdapterModel against real PEFT: a mixed batch equals every row run alone through PEFT.

For each tiny base, every LoRA/DoRA/AdaLoRA/IA3 parity case of `parity_table.py` (plus, on BERT, a head with
another label count) is created by PEFT with perturbed weights and saved; 16+ rows drawn at random from those
adapters and the base model run as ONE batch, and row i must equal PEFT's output for row i alone.
"""

from __future__ import annotations

import copy
import random
import warnings

import peft
import pytest
import torch
from parity_table import CASES, TASK, prepare_adapter
from tiny_models import BUILDERS, VOCAB, tiny_bert

from adapters_core import AdapterNotFoundError
from adapters_core.multi import MultiAdapterModel

TOL = 1e-4
# Extra adapters per base beside the parity cases: other ranks (1 to 16) and target sets, so every base has
# >= 10 distinct adapters, and modules that some adapters target and others do not.
EXTRA: dict[str, list[tuple[str, str, dict]]] = {
    "llama": [("LoRA-r1-o", "LoraConfig", {"r": 1, "target_modules": ["o_proj"]})],
    "gpt2": [
        ("LoRA-r1-c_proj", "LoraConfig", {"r": 1, "target_modules": ["c_proj"]}),
        ("LoRA-r16-c_fc", "LoraConfig", {"r": 16, "lora_alpha": 4, "target_modules": ["c_fc"]}),
        ("IA3-attn-only", "IA3Config", {"target_modules": ["c_attn"], "feedforward_modules": []}),
    ],
    "bert": [
        ("LoRA-r8-dense", "LoraConfig", {"r": 8, "target_modules": ["dense"]}),
        ("LoRA-r1-key", "LoraConfig", {"r": 1, "use_rslora": True, "target_modules": ["key"]}),
        ("LoRA-r16-all", "LoraConfig", {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}),
    ],
    "t5": [
        ("LoRA-r1-o", "LoraConfig", {"r": 1, "target_modules": ["o"]}),
        ("LoRA-r16-wi", "LoraConfig", {"r": 16, "lora_alpha": 8, "target_modules": ["wi"]}),
        ("LoRA-r8-k", "LoraConfig", {"r": 8, "target_modules": ["k"], "use_rslora": True}),
        ("IA3-attn-only", "IA3Config", {"target_modules": ["k", "v"], "feedforward_modules": []}),
        ("DoRA-r2-o", "LoraConfig", {"r": 2, "use_dora": True, "target_modules": ["o", "wo"]}),
    ],
}
ROWS = 18


def make_rows(base: str, seed: int, rows: int = ROWS, length: int = 10) -> dict[str, torch.Tensor]:
    """Rows of random lengths (>= 3), left-padded for causal LMs and right-padded otherwise."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (rows, length), generator=g)
    mask = torch.ones(rows, length, dtype=torch.long)
    for r in range(rows):
        n = int(torch.randint(3, length + 1, (1,), generator=g))
        pad = length - n
        if base in ("llama", "gpt2"):
            mask[r, :pad], ids[r, :pad] = 0, 0
        else:
            mask[r, n:], ids[r, n:] = 0, 0
    out = {"input_ids": ids, "attention_mask": mask}
    if base == "t5":
        dec = torch.randint(3, VOCAB, (rows, 6), generator=g)
        dec[:, 0] = 0
        out["decoder_input_ids"] = dec
    return out


class Fixture:
    """PEFT adapters saved for one base, their PEFT models (the oracle), and a MultiAdapterModel."""

    def __init__(self, base: str, workdir) -> None:
        warnings.simplefilter("ignore")
        self.base = base
        self.peft_models: dict[str, torch.nn.Module] = {}
        self.dirs: dict[str, str] = {}
        cases = [c for c in CASES if c.base == base]
        for i, case in enumerate(cases):
            name = f"{case.method}-{case.name}".replace(" ", "_")
            self._save(
                name,
                BUILDERS[base](),
                case.config(peft),
                lambda m, c=case, s=i: prepare_adapter(m, c, s + 1),
                workdir,
            )
        for j, (name, cls, kwargs) in enumerate(EXTRA[base]):  # more ranks and target sets: >= 10 adapters
            config = getattr(peft, cls)(task_type=TASK[base], **kwargs)
            self._save(
                name, BUILDERS[base](), config, lambda m, s=j: prepare_adapter(m, cases[0], 50 + s), workdir
            )
        if base == "bert":  # a classification adapter with 5 labels on a 3-label base
            config = peft.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"])
            self._save(
                "LoRA-5-labels",
                tiny_bert(num_labels=5),
                config,
                lambda m: prepare_adapter(m, cases[0], 99),
                workdir,
            )
        self.model = MultiAdapterModel(BUILDERS[base]())
        for name, path in self.dirs.items():
            self.model.add(name, path)
        self.base_model = BUILDERS[base]()

    def _save(self, name, model, config, prepare, workdir) -> None:
        peft_model = peft.get_peft_model(model, config)
        prepare(peft_model)
        path = str(workdir / name)
        peft_model.save_pretrained(path)
        base = BUILDERS[self.base]() if name != "LoRA-5-labels" else tiny_bert(num_labels=5)
        self.peft_models[name] = peft.PeftModel.from_pretrained(base, path).eval()
        self.dirs[name] = path

    def reference_row(self, name: str | None, inputs: dict[str, torch.Tensor], row: int) -> torch.Tensor:
        """PEFT's output for row `row` run alone: its real tokens only, no padding (so positions count real
        tokens, as in generation)."""
        model = self.base_model if name is None else self.peft_models[name]
        keep = inputs["attention_mask"][row].bool()
        alone = {k: v[row : row + 1] for k, v in inputs.items()}
        alone["input_ids"] = inputs["input_ids"][row : row + 1, keep]
        alone["attention_mask"] = inputs["attention_mask"][row : row + 1, keep]
        with torch.no_grad():
            return model(**alone).logits[0]


@pytest.fixture(scope="module", params=["llama", "gpt2", "bert", "t5"])
def fx(request, tmp_path_factory) -> Fixture:
    return Fixture(request.param, tmp_path_factory.mktemp(request.param))


def compare_row(fx: Fixture, out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float:
    if fx.base in ("llama", "gpt2"):  # ref covers the real tokens only
        return float((out[mask.bool()] - ref).abs().max())
    if fx.base == "bert":  # (C,) logits; a narrower head is padded with -inf
        c = ref.shape[-1]
        assert torch.isinf(out[c:]).all() and (out[c:] < 0).all()
        return float((out[:c] - ref).abs().max())
    return float((out - ref).abs().max())  # t5: decoder positions, all real


def test_mixed_batch_equals_each_row_alone_in_peft(fx: Fixture) -> None:
    names: list[str | None] = [*fx.dirs, None]
    assert len(fx.dirs) >= 10
    rng = random.Random(0)
    adapter_names = names + [rng.choice(names) for _ in range(max(0, ROWS - len(names)))]
    rng.shuffle(adapter_names)
    inputs = make_rows(fx.base, seed=1, rows=len(adapter_names))
    with torch.no_grad():
        out = fx.model(adapter_names=adapter_names, **inputs).logits
    worst: dict[str | None, float] = {}
    for row, name in enumerate(adapter_names):
        ref = fx.reference_row(name, inputs, row)
        diff = compare_row(fx, out[row], ref, inputs["attention_mask"][row])
        worst[name] = max(worst.get(name, 0.0), diff)
        if name is not None:  # the adapter really changes this row (so the comparison can fail)
            base_ref = fx.reference_row(None, inputs, row)
            c = min(base_ref.shape[-1], ref.shape[-1])
            assert float((ref[..., :c] - base_ref[..., :c]).abs().max()) > 1e-3, name
    bad = {n: d for n, d in worst.items() if d > TOL}
    assert not bad, f"rows differ from PEFT: {bad}"


def test_adding_and_removing_never_changes_other_rows(fx: Fixture, tmp_path) -> None:
    names = [*list(fx.dirs)[:3], None]
    inputs = make_rows(fx.base, seed=2, rows=len(names))
    with torch.no_grad():
        before = fx.model(adapter_names=names, **inputs).logits.clone()
        extra = next(iter(fx.dirs.values()))
        fx.model.add("extra", extra)
        during = fx.model(adapter_names=names, **inputs).logits.clone()
        fx.model.remove("extra")
        after = fx.model(adapter_names=names, **inputs).logits
    assert torch.equal(before, during) and torch.equal(before, after)
    with pytest.raises(AdapterNotFoundError, match="no adapter named 'extra'"):
        fx.model(adapter_names=["extra", *names[1:]], **inputs)


def test_unknown_name_is_an_error_never_the_base(fx: Fixture) -> None:
    inputs = make_rows(fx.base, seed=3, rows=2)
    with pytest.raises(AdapterNotFoundError, match="no adapter named 'nope'"):
        fx.model(adapter_names=["nope", None], **inputs)


@pytest.mark.parametrize("base", ["llama"])
def test_greedy_generation_per_row_equals_row_alone(base: str, tmp_path) -> None:
    fx = Fixture.__new__(Fixture)
    fx.base, fx.peft_models, fx.dirs = base, {}, {}
    chosen = [c for c in CASES if c.base == base and c.method in ("LoRA", "DoRA", "IA3")][:4]
    for i, case in enumerate(chosen):
        fx._save(
            f"a{i}",
            BUILDERS[base](),
            case.config(peft),
            lambda m, c=case, s=i: prepare_adapter(m, c, s + 1),
            tmp_path,
        )
    model = MultiAdapterModel(BUILDERS[base]())
    for name, path in fx.dirs.items():
        model.add(name, path)
    names = [*fx.dirs, None, "a1"]
    inputs = make_rows(base, seed=4, rows=len(names), length=6)
    gen = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    out = model.generate(adapter_names=names, **inputs, **gen)
    for row, name in enumerate(names):
        ref_model = BUILDERS[base]() if name is None else fx.peft_models[name]
        alone = {k: v[row : row + 1] for k, v in inputs.items()}
        with torch.no_grad():
            ref = ref_model.generate(**alone, **gen)
        assert torch.equal(out[row], ref[0]), (name, out[row], ref[0])


def test_mixed_batch_is_not_the_same_model_object(fx: Fixture) -> None:
    """The wrapped base stays a transformers model: generate/forward still accept its own kwargs."""
    assert type(fx.model.model).__name__ == type(copy.deepcopy(fx.base_model)).__name__
    assert TASK[fx.base]
