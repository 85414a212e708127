"""MultiAdapterModel's serving steps (`paged_step`), its `generate` and `classify`, across every method.

On Llama (GQA), GPT-2 and T5, real PEFT makes ≥ 7 adapters of every method the base supports (LoRA, DoRA,
AdaLoRA, IA3, prompt tuning, P-tuning, prefix tuning, LLaMA-Adapter on causal bases); one MultiAdapterModel
serves them all. A small greedy engine over `paged_step` (rows join, decode one token per step, leave and give
their blocks back) must give every row exactly the tokens of `MultiAdapterModel.generate` of that row alone,
and the logits of every step must equal the row's own steps run alone — whatever rows share its steps, however
long their streams. `generate` itself is checked against PEFT (or the single-adapter model for prompt methods).
"""

from __future__ import annotations

import random

import peft
import pytest
import torch
from paged_helpers import GreedyEngine
from parity_table import CASES, prepare_adapter
from tiny_models import BUILDERS, VOCAB, perturb_adapter_weights, tiny_bert

from adapters_core import AdapterModel
from adapters_core.errors import AdapterNotFoundError
from adapters_core.multi import MultiAdapterModel

NEW = 10
TOL = 1e-4
TASK = {"llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM", "t5": "SEQ_2_SEQ_LM"}
TARGETS = {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"], "t5": ["q", "v"]}
PEFT_ORACLE = ("lora", "dora", "ia3", "adalora")  # PEFT's own generate is right for these
SWAPYARD_ORACLE = ("prompt", "prefix")  # the single-adapter AdapterModel (forward-consistent generation)


def configs(base: str) -> dict[str, object]:
    adalora = next(c for c in CASES if c.base == base and c.config_cls == "AdaLoraConfig")
    cfgs: dict[str, object] = {
        "lora": peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[base]),
        "dora": peft.LoraConfig(r=2, use_dora=True, target_modules=TARGETS[base]),
        "adalora": adalora,
        "ia3": peft.IA3Config(),
        "prompt": peft.PromptTuningConfig(num_virtual_tokens=4),
        "ptune": peft.PromptEncoderConfig(num_virtual_tokens=3, encoder_hidden_size=32),
        "prefix": peft.PrefixTuningConfig(num_virtual_tokens=5),
    }
    if base != "t5":
        cfgs["llama_adapter"] = peft.AdaptionPromptConfig(adapter_len=4, adapter_layers=1)
    return cfgs


class Served:
    """One base: a MultiAdapterModel with every adapter, the oracles, and memoised solo runs."""

    def __init__(self, base: str, root) -> None:
        self.base = base
        self.multi = MultiAdapterModel(BUILDERS[base]())
        self.oracles: dict[str | None, torch.nn.Module] = {None: BUILDERS[base]()}
        for i, (name, cfg) in enumerate(configs(base).items()):
            case = cfg if not isinstance(cfg, peft.PeftConfig) else None
            config = case.config(peft) if case is not None else cfg
            config.task_type = TASK[base]
            pm = peft.get_peft_model(BUILDERS[base](), config)
            if case is not None:
                prepare_adapter(pm, case, seed=10 + i)
            else:
                perturb_adapter_weights(pm, seed=10 + i)
            pm.eval().save_pretrained(root / name)
            self.multi.add(name, root / name)
            if name in PEFT_ORACLE:
                self.oracles[name] = peft.PeftModel.from_pretrained(BUILDERS[base](), root / name).eval()
            elif name in SWAPYARD_ORACLE:
                self.oracles[name] = AdapterModel.from_pretrained(BUILDERS[base](), root / name).eval()
        self.names: list[str | None] = [*configs(base), None]
        self.eos = int(self.multi.model.config.eos_token_id)
        self._solo: dict[tuple, list[int]] = {}

    def solo(self, name: str | None, prompt: list[int]) -> list[int]:
        """`MultiAdapterModel.generate` of this row alone: NEW greedy tokens, cut after an EOS."""
        key = (name, tuple(prompt))
        if key not in self._solo:
            out = self.multi.generate(
                input_ids=torch.tensor([prompt]), adapter_names=[name], max_new_tokens=NEW, do_sample=False
            )[0]
            self._solo[key] = cut(out[1:] if self.base == "t5" else out[len(prompt) :], self.eos)
        return self._solo[key]

    @torch.no_grad()
    def solo_logits(self, name: str | None, prompt: list[int], steps: int) -> list[torch.Tensor]:
        """The paged steps of this row alone: (V,) logits of every step."""
        engine = GreedyEngine(self.multi, self.eos)
        engine.admit([0], [prompt], [name], [steps])
        while engine.running:
            engine.step()
        return engine.logits[0]


def cut(tokens: torch.Tensor | list[int], eos: int) -> list[int]:
    tokens = [int(t) for t in tokens]
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


@pytest.fixture(scope="module", params=["llama", "gpt2", "t5"])
def served(request, tmp_path_factory) -> Served:
    return Served(request.param, tmp_path_factory.mktemp(request.param))


def prompts(seed: int, rows: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, VOCAB) for _ in range(rng.randint(2, 9))] for _ in range(rows)]


@torch.no_grad()
def test_paged_steps_equal_each_row_alone(served: Served) -> None:
    """Every method and the base, two rows each, prompts of different lengths, one batch for NEW tokens."""
    names = [n for n in served.names for _ in range(2)]
    random.Random(0).shuffle(names)
    rows = prompts(1, len(names))
    engine = GreedyEngine(served.multi, served.eos)
    engine.admit(list(range(len(rows))), rows, names, [NEW] * len(rows))
    while engine.running:
        engine.step()
    for rid, (name, prompt) in enumerate(zip(names, rows)):
        assert engine.tokens[rid] == served.solo(name, prompt), (rid, name)
        if name is not None:  # the adapter changes its row (otherwise the parity proves nothing)
            base = served.solo_logits(None, prompt, 1)[0]
            assert float((engine.logits[rid][0] - base).abs().max()) > 1e-3, name
    # ... and for a few methods, what PEFT (or the single-adapter model for prompt methods) generates alone
    seen = set()
    for name, prompt in zip(names, rows):
        if name in seen or name not in (*PEFT_ORACLE, *SWAPYARD_ORACLE, None):
            continue
        seen.add(name)
        out = served.oracles[name].generate(
            input_ids=torch.tensor([prompt]), max_new_tokens=NEW, do_sample=False, pad_token_id=0
        )[0]
        want = cut(out[1:] if served.base == "t5" else out[len(prompt) :], served.eos)
        assert served.solo(name, prompt) == want, name
    assert len(seen) == len(PEFT_ORACLE) + len(SWAPYARD_ORACLE) + 1


@torch.no_grad()
def test_continuous_batching_rows_join_and_leave(served: Served) -> None:
    """3 rows start; after 3 steps 3 more join (prefilled beside the running rows' decodes); more join later;
    rows leave at various steps, and the running rows' order flips once. Every row's tokens equal its solo run
    and every step's logits its solo steps (rows of different stream lengths and adapters share each step)."""
    rng = random.Random(2)
    names = [served.names[i % len(served.names)] for i in range(12)]
    rng.shuffle(names)
    rows = prompts(3, len(names))
    limits = [rng.randint(2, NEW) for _ in names]
    engine = GreedyEngine(served.multi, served.eos)
    waves = {0: [0, 1, 2], 3: [3, 4, 5], 5: list(range(6, 10)), 6: [10, 11]}
    for t in range(3 * NEW):
        if t in waves:
            ids = waves[t]
            engine.admit(ids, [rows[i] for i in ids], [names[i] for i in ids], [limits[i] for i in ids])
        if t == 4 and engine.running:
            engine.running.reverse()  # any order: rows and their adapters travel together
        if engine.running:
            engine.step()
        elif t > max(waves):
            break
    for rid, name in enumerate(names):
        want = served.solo(name, rows[rid])[: limits[rid]]
        assert engine.tokens[rid] == want, (rid, name, engine.tokens[rid], want)
        solo = served.solo_logits(name, rows[rid], len(want))
        worst = max(float((a - b).abs().max()) for a, b in zip(engine.logits[rid], solo))
        assert worst <= TOL, (rid, name, worst)


def test_removed_adapter_is_an_error_for_its_rows(served: Served, tmp_path) -> None:
    model = served.multi
    cfg = peft.LoraConfig(r=2, target_modules=TARGETS[served.base], task_type=TASK[served.base])
    pm = peft.get_peft_model(BUILDERS[served.base](), cfg)
    perturb_adapter_weights(pm, seed=5)
    pm.save_pretrained(tmp_path / "tmp")
    model.add("tmp", tmp_path / "tmp")
    engine = GreedyEngine(model, served.eos)
    engine.admit([0, 1], [[5, 6, 7], [8, 9]], ["tmp", "lora"], [NEW, NEW])
    engine.step()
    model.remove("tmp")
    with pytest.raises(AdapterNotFoundError, match="no adapter named 'tmp'"):
        engine.step()  # never the base model, or another adapter, for the removed adapter's row
    engine.leave(0)
    engine.step()  # the other row carries on
    assert engine.tokens[1] == served.solo("lora", [8, 9])[:2]


@torch.no_grad()
def test_classify_two_heads_of_different_widths_equal_peft(tmp_path) -> None:
    multi = MultiAdapterModel(tiny_bert())
    oracles: dict[str | None, torch.nn.Module] = {None: tiny_bert()}
    specs = {
        "lora5": (5, peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"])),
        "prompt3": (3, peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)),
    }
    for i, (name, (labels, cfg)) in enumerate(specs.items()):
        pm = peft.get_peft_model(tiny_bert(num_labels=labels), cfg)
        perturb_adapter_weights(pm, seed=i)
        for p_name, p in pm.named_parameters():
            if "modules_to_save" in p_name:
                p.data.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
        pm.eval().save_pretrained(tmp_path / name)
        multi.add(name, tmp_path / name)
        oracles[name] = peft.PeftModel.from_pretrained(tiny_bert(num_labels=labels), tmp_path / name).eval()
    names = ["lora5", None, "prompt3", "lora5", "prompt3", None]
    rows = prompts(4, len(names))
    out = multi.classify(rows, names)
    for row, name, got in zip(rows, names, out):
        want = oracles[name](input_ids=torch.tensor([row])).logits[0]
        assert got.shape == want.shape == ((5,) if name == "lora5" else (3,))
        assert float((got - want).abs().max()) <= TOL, name


@torch.no_grad()
def test_triton_kernels_on_rows_of_different_stream_lengths(tmp_path, monkeypatch) -> None:
    """The Triton kernels (interpreted on CPU) read the segment metadata per row: rows that joined at different
    steps (streams of different lengths, one decoding beside two prefilling) and leave in any order give the
    reference backend's logits."""
    pytest.importorskip("triton")
    multi = MultiAdapterModel(BUILDERS["llama"]())
    for i, r in enumerate([2, 8]):
        cfg = peft.LoraConfig(r=r, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        pm = peft.get_peft_model(BUILDERS["llama"](), cfg)
        perturb_adapter_weights(pm, seed=i)
        pm.save_pretrained(tmp_path / f"t{i}")
        multi.add(f"t{i}", tmp_path / f"t{i}")

    def run(backend: str) -> list[torch.Tensor]:
        monkeypatch.setenv("SWAPYARD_KERNELS", backend)
        engine = GreedyEngine(multi, eos=-1)
        engine.admit([0], [[5, 6, 7, 8, 9, 10, 11, 12]], ["t0"], [NEW])
        engine.step()
        engine.admit([1, 2], [[7, 8], [9, 10, 11]], ["t1", None], [NEW, NEW])
        for _ in range(3):
            engine.step()
        engine.leave(1)
        engine.running.reverse()
        engine.step()
        return [torch.stack(engine.logits[rid]) for rid in (0, 1, 2)]

    for want, got in zip(run("torch"), run("triton")):
        assert float((want - got).abs().max()) <= 1e-5
