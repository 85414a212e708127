"""MultiAdapterModel serves prompt tuning, P-tuning, prefix tuning and LLaMA-Adapter in mixed batches.

On each tiny base (Llama GQA, GPT-2, BERT classification, T5) real PEFT creates ≥ 10 adapters of every method
it supports there (plus LoRA and IA3) with perturbed weights and saves them; one MultiAdapterModel serves them
all. A padded batch of 18 rows drawn at random from the adapters and the base gives, row by row, PEFT's output
for that row run alone on its unpadded tokens (minus PEFT's leading virtual positions), ≤ 1e-4 in float32.
BERT prefix tuning cannot run in PEFT with transformers 5 (reference §10): its oracle is Swapyard's
single-adapter model, checked against a hand-written BERT forward in test_prompt_parity.py.
Greedy generation of every row equals greedy decoding of that row alone by repeated full PEFT forwards.
"""

from __future__ import annotations

import random

import peft
import pytest
import torch
from tiny_models import BUILDERS, VOCAB, max_abs_diff, perturb_adapter_weights

from adapters_core import AdapterModel
from adapters_core.config import AdapterConfig
from adapters_core.errors import AdapterNotFoundError, AdapterShapeError
from adapters_core.multi import MultiAdapterModel

TOL = 1e-4
ROWS, LENGTH, NEW = 18, 9, 10
TASK = {"llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM", "bert": "SEQ_CLS", "t5": "SEQ_2_SEQ_LM"}
CAUSAL = ("llama", "gpt2")
LORA_TARGETS = {
    "llama": (["q_proj", "v_proj"], ["gate_proj"]),
    "gpt2": (["c_attn"], ["c_fc"]),
    "bert": (["query", "value"], ["intermediate.dense"]),
    "t5": (["q", "v"], ["wi"]),
}


def adapter_configs(base: str) -> dict[str, peft.PeftConfig]:
    """Every method PEFT supports on `base`, with different virtual-token counts and prefix lengths."""
    first, second = LORA_TARGETS[base]
    cfgs = {
        "prompt4": peft.PromptTuningConfig(num_virtual_tokens=4),
        "prompt2": peft.PromptTuningConfig(num_virtual_tokens=2),
        "p_mlp3": peft.PromptEncoderConfig(num_virtual_tokens=3, encoder_hidden_size=32),
        "p_lstm5": peft.PromptEncoderConfig(
            num_virtual_tokens=5, encoder_hidden_size=16, encoder_reparameterization_type="LSTM"
        ),
        "prefix6": peft.PrefixTuningConfig(num_virtual_tokens=6),
        "prefix3_proj": peft.PrefixTuningConfig(
            num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=24
        ),
        "lora4": peft.LoraConfig(r=4, lora_alpha=8, target_modules=first),
        "lora2": peft.LoraConfig(r=2, lora_alpha=4, target_modules=second),
        "ia3": peft.IA3Config(),
    }
    if base in CAUSAL:
        cfgs["llama_adapter1"] = peft.AdaptionPromptConfig(adapter_len=4, adapter_layers=1)
        cfgs["llama_adapter2"] = peft.AdaptionPromptConfig(adapter_len=3, adapter_layers=2)
    else:
        cfgs["prefix2"] = peft.PrefixTuningConfig(num_virtual_tokens=2)
    for cfg in cfgs.values():
        cfg.task_type = TASK[base]
    return cfgs


@torch.no_grad()
def perturb_heads(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "modules_to_save" in name:
            p.add_(0.5 * torch.randn(p.shape, generator=g))


class Served:
    """One base: PEFT oracles per adapter, the MultiAdapterModel serving all of them, and where they are saved."""

    def __init__(self, base: str, root) -> None:
        self.base = base
        self.dirs, self.oracles = {}, {}
        self.multi = MultiAdapterModel(BUILDERS[base]())
        for i, (name, cfg) in enumerate(adapter_configs(base).items()):
            pm = peft.get_peft_model(BUILDERS[base](), cfg)
            perturb_adapter_weights(pm, seed=100 + i)
            perturb_heads(pm, seed=200 + i)
            pm.eval().save_pretrained(root / name)
            self.dirs[name] = root / name
            if base == "bert" and name.startswith("prefix"):  # PEFT cannot run it (module docstring)
                pm = AdapterModel.from_pretrained(BUILDERS[base](), root / name).eval()
            self.oracles[name] = pm
            self.multi.add(name, root / name)
        self.oracles[None] = BUILDERS[base]().eval()

    def row_names(self, seed: int, rows: int = ROWS) -> list[str | None]:
        """Every adapter and the base at least once, the rest drawn at random; shuffled."""
        rng = random.Random(seed)
        names: list[str | None] = [*self.dirs, None]
        names += [rng.choice(names) for _ in range(rows - len(names))]
        rng.shuffle(names)
        return names


@pytest.fixture(scope="module", params=list(BUILDERS))
def served(request, tmp_path_factory) -> Served:
    return Served(request.param, tmp_path_factory.mktemp(request.param))


def padded_batch(base: str, rows: int, seed: int) -> dict[str, torch.Tensor]:
    """Rows of random lengths 3..LENGTH: left-padded for causal LMs (as for generation), right-padded else."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (rows, LENGTH), generator=g)
    mask = torch.zeros(rows, LENGTH, dtype=torch.long)
    for r in range(rows):
        n = LENGTH if r == 0 else int(torch.randint(3, LENGTH + 1, (1,), generator=g))
        if base in CAUSAL:
            mask[r, LENGTH - n :] = 1
        else:
            mask[r, :n] = 1
    ids = ids * mask
    out = {"input_ids": ids, "attention_mask": mask}
    if base == "t5":
        dec = torch.randint(3, VOCAB, (rows, 5), generator=g)
        dec[:, 0] = 0
        out["decoder_input_ids"] = dec
    return out


def row_alone(inputs: dict[str, torch.Tensor], r: int) -> dict[str, torch.Tensor]:
    """Row r with its padding removed (a 1-row batch)."""
    keep = inputs["attention_mask"][r].bool()
    out = {
        "input_ids": inputs["input_ids"][r : r + 1, keep],
        "attention_mask": inputs["attention_mask"][r : r + 1, keep],
    }
    if "decoder_input_ids" in inputs:
        out["decoder_input_ids"] = inputs["decoder_input_ids"][r : r + 1]
    return out


@torch.no_grad()
def oracle_logits(served: Served, name: str | None, one: dict[str, torch.Tensor]) -> torch.Tensor:
    """PEFT's logits for one row alone, without the virtual positions PEFT puts first (causal prompt methods)."""
    out = served.oracles[name](**one).logits
    if served.base in CAUSAL:
        out = out[:, -one["input_ids"].shape[1] :]
    return out


def real_part(served: Served, logits: torch.Tensor, inputs: dict[str, torch.Tensor], r: int) -> torch.Tensor:
    """Our logits of row r at its real positions (BERT: the pooled (1, C))."""
    if served.base in CAUSAL:
        return logits[r : r + 1, inputs["attention_mask"][r].bool()]
    return logits[r : r + 1]


@torch.no_grad()
def test_mixed_batch_equals_each_row_alone(served: Served) -> None:
    names = served.row_names(seed=1)
    inputs = padded_batch(served.base, ROWS, seed=2)
    logits = served.multi(**inputs, adapter_names=names).logits
    if served.base != "bert":
        assert logits.shape[:2] == (ROWS, 5 if served.base == "t5" else LENGTH)
    worst: dict[str | None, float] = {}
    for r, name in enumerate(names):
        diff = max_abs_diff(
            real_part(served, logits, inputs, r), oracle_logits(served, name, row_alone(inputs, r))
        )
        worst[name] = max(worst.get(name, 0.0), diff)
    assert max(worst.values()) <= TOL, worst
    # Each adapter changes its rows (otherwise the parity above proves nothing).
    for r, name in enumerate(names):
        if name is not None:
            base_out = oracle_logits(served, None, row_alone(inputs, r))
            assert max_abs_diff(real_part(served, logits, inputs, r), base_out) > 1e-3, name


@torch.no_grad()
def test_outputs_cover_real_positions_only(served: Served) -> None:
    """Prompt rows return (B, L, V) aligned with input_ids, like every other row (PEFT would return n+L)."""
    if served.base == "bert":
        pytest.skip("sequence classification pools: (B, num_labels)")
    inputs = padded_batch(served.base, 3, seed=3)
    out = served.multi(**inputs, adapter_names=["prompt4", "p_lstm5", None])
    want = inputs["decoder_input_ids" if served.base == "t5" else "input_ids"].shape
    assert out.logits.shape == (*want, VOCAB)
    as_tuple = served.multi(**inputs, adapter_names=["prompt4", "p_lstm5", None], return_dict=False)
    assert torch.equal(as_tuple[0], out.logits)
    if served.base == "t5":  # the encoder output too: real positions only
        assert out.encoder_last_hidden_state.shape[:2] == inputs["input_ids"].shape


@torch.no_grad()
def decode_alone(served: Served, name: str | None, one: dict[str, torch.Tensor]) -> torch.Tensor:
    """Greedy decoding of one row by repeated full PEFT forwards (the forward-consistent semantics, §14).
    Returns the new tokens (NEW,), `pad` after an EOS."""
    model, cfg = served.oracles[name], served.oracles[None].config
    eos, pad = cfg.eos_token_id, cfg.pad_token_id
    if served.base == "t5":
        seq, prompt = torch.full((1, 1), cfg.decoder_start_token_id), one
    else:
        seq, prompt = one["input_ids"], None
    new: list[int] = []
    for _ in range(NEW):
        if eos in new:  # a finished row gets pad tokens, as in transformers
            new.append(pad)
            continue
        if prompt is not None:
            logits = model(
                input_ids=prompt["input_ids"], attention_mask=prompt["attention_mask"], decoder_input_ids=seq
            ).logits
        else:
            logits = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits
        tok = int(logits[0, -1].argmax())
        new.append(tok)
        seq = torch.cat([seq, torch.tensor([[tok]])], dim=1)
    return torch.tensor(new)


@torch.no_grad()
@pytest.mark.parametrize("mix", ["all", "no_virtual_or_prefix"])
def test_greedy_generation_equals_each_row_alone(served: Served, mix: str) -> None:
    """Batches with virtual-token/prefix rows use Swapyard's loop; the others transformers' generate."""
    if served.base == "bert":
        pytest.skip("BERT sequence classification does not generate")
    rows = 16
    names = served.row_names(seed=4, rows=rows)
    if mix != "all":
        kept = [n for n in [*served.dirs, None] if n is None or not n.startswith(("prompt", "p_", "prefix"))]
        names = [random.Random(r).choice(kept) for r in range(rows)]
    inputs = padded_batch(served.base, rows, seed=5)
    inputs.pop("decoder_input_ids", None)
    got = served.multi.generate(**inputs, adapter_names=names, max_new_tokens=NEW, do_sample=False)
    start = 1 if served.base == "t5" else LENGTH
    for r, name in enumerate(names):
        mine = got[r, start:]
        want = decode_alone(served, name, row_alone(inputs, r))
        mine = torch.cat([mine, torch.full((NEW - mine.numel(),), served.oracles[None].config.pad_token_id)])
        assert torch.equal(mine, want), (r, name, mine.tolist(), want.tolist())
    if served.base in CAUSAL:
        assert torch.equal(got[:, :LENGTH], inputs["input_ids"])


@torch.no_grad()
def test_sampled_generation(served: Served) -> None:
    """Sampling runs through the same loop: reproducible with a generator, and top_k=1 is greedy."""
    if served.base == "bert":
        pytest.skip("BERT sequence classification does not generate")
    names = served.row_names(seed=6)
    inputs = padded_batch(served.base, ROWS, seed=7)
    inputs.pop("decoder_input_ids", None)

    def sample(**kw):
        return served.multi.generate(**inputs, adapter_names=names, max_new_tokens=6, do_sample=True, **kw)

    a = sample(temperature=0.7, generator=torch.Generator().manual_seed(0))
    b = sample(temperature=0.7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    greedy = served.multi.generate(**inputs, adapter_names=names, max_new_tokens=6, do_sample=False)
    assert torch.equal(sample(top_k=1, generator=torch.Generator().manual_seed(1)), greedy)


@torch.no_grad()
def test_add_and_remove_never_change_other_rows(served: Served, tmp_path) -> None:
    names = served.row_names(seed=8)
    inputs = padded_batch(served.base, ROWS, seed=9)
    before = served.multi(**inputs, adapter_names=names).logits
    # a new adapter with more virtual tokens than any other: the batch layout grows when it is in the batch
    cfg = peft.PromptTuningConfig(num_virtual_tokens=7, task_type=TASK[served.base])
    pm = peft.get_peft_model(BUILDERS[served.base](), cfg)
    perturb_adapter_weights(pm, seed=9)
    pm.save_pretrained(tmp_path / "new")
    served.multi.add("new7", tmp_path / "new")
    try:
        assert torch.equal(served.multi(**inputs, adapter_names=names).logits, before)
        with_new = served.multi(**inputs, adapter_names=["new7", *names[1:]]).logits
        assert max_abs_diff(with_new[1:], before[1:]) <= 1e-5
        one = row_alone(inputs, 0)
        want = pm.eval()(**one).logits
        want = want[:, -one["input_ids"].shape[1] :] if served.base in CAUSAL else want
        assert max_abs_diff(real_part(served, with_new, inputs, 0), want) <= TOL
        # an adapter already loaded in memory (Swapyard's single-adapter model) serves like its files
        served.multi.add(
            "loaded", AdapterModel.from_pretrained(BUILDERS[served.base](), served.dirs["prefix6"])
        )
        twin = ["loaded" if n == "prefix6" else n for n in names]
        assert max_abs_diff(served.multi(**inputs, adapter_names=twin).logits, before) <= 1e-6
    finally:
        served.multi.remove("new7")
        if "loaded" in served.multi.adapters:
            served.multi.remove("loaded")
    assert torch.equal(served.multi(**inputs, adapter_names=names).logits, before)
    with pytest.raises(AdapterNotFoundError):
        served.multi(**inputs, adapter_names=["new7", *names[1:]])


def test_unknown_name_is_an_error(served: Served) -> None:
    inputs = padded_batch(served.base, 2, seed=10)
    with pytest.raises(AdapterNotFoundError):
        served.multi(**inputs, adapter_names=["prompt4", "no-such-adapter"])
    if served.base != "bert":
        with pytest.raises(AdapterNotFoundError):
            served.multi.generate(
                **{k: v for k, v in inputs.items() if k != "decoder_input_ids"},
                adapter_names=["no-such-adapter", None],
                max_new_tokens=2,
            )


def test_table_that_does_not_fit_the_base_is_a_shape_error(served: Served) -> None:
    config = AdapterConfig.from_pretrained(str(served.dirs["prompt4"]))
    rows = 8 if served.base == "t5" else 4
    with pytest.raises(AdapterShapeError, match="prompt_embeddings"):
        served.multi.add("bad", (config, {"prompt_embeddings": torch.zeros(rows, 48)}))
    prefix = AdapterConfig.from_pretrained(str(served.dirs["prefix6"]))
    prefix.num_layers = 5  # saved from a deeper base
    with pytest.raises(AdapterShapeError, match="num_layers"):
        served.multi.add("bad", (prefix, {"prompt_embeddings": torch.zeros(6, 5 * 2 * 64)}))
    assert "bad" not in served.multi.adapters
