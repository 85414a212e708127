"""`MultiAdapterModel.embed` against real PEFT: pooled last hidden states of a mixed batch equal, row by row,
PEFT's `output_hidden_states=True` of that row alone, pooled by hand (CLS on BERT, last token and mean on Llama,
mean of the encoder on T5). The adapters are perturbed, so each changes the hidden states (checked)."""

from __future__ import annotations

import copy

import peft
import pytest
import torch
from tiny_models import BUILDERS, VOCAB, perturb_adapter_weights

from adapters_core.multi import MultiAdapterModel
from adapters_core.multi.pooling import pool

TOL = 1e-4
TARGETS = {
    "llama": ["q_proj", "v_proj", "down_proj"],
    "bert": ["query", "value", "dense"],
    "t5": ["q", "v", "wi"],
}
TASK = {"llama": "CAUSAL_LM", "bert": "FEATURE_EXTRACTION", "t5": "SEQ_2_SEQ_LM"}


def _rows(seed: int, count: int = 5) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(3, VOCAB, (int(n),), generator=g).tolist()
        for n in torch.randint(2, 9, (count,), generator=g)
    ]


def _peft_hidden(model: torch.nn.Module, base: str, ids: list[int]) -> torch.Tensor:
    """Last hidden states (L, d) of one row alone through `model` (a PeftModel, or the plain base)."""
    x = torch.tensor([ids])
    kwargs: dict = {"input_ids": x, "attention_mask": torch.ones_like(x), "output_hidden_states": True}
    if base == "t5":
        kwargs["decoder_input_ids"] = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        out = model(**kwargs)
    return (out.encoder_last_hidden_state if base == "t5" else out.hidden_states[-1])[0]


@pytest.mark.parametrize(
    ("base", "pooling", "expected"),
    [("bert", None, "cls"), ("llama", None, "last"), ("llama", "mean", "mean"), ("t5", None, "mean")],
)
def test_embed_matches_peft_row_by_row(tmp_path, base: str, pooling: str | None, expected: str) -> None:
    names = ["a", "b"]
    plain = BUILDERS[base]()
    oracles: dict[str | None, torch.nn.Module] = {None: plain}
    for i, name in enumerate(names):
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[base], task_type=TASK[base])
        oracle = peft.get_peft_model(copy.deepcopy(plain), config)
        perturb_adapter_weights(oracle, seed=30 + i, scale=0.5)
        oracle.save_pretrained(tmp_path / name)
        oracles[name] = oracle.eval()
    multi = MultiAdapterModel(copy.deepcopy(plain))
    for name in names:
        multi.add(name, str(tmp_path / name))
    rows = _rows(seed=len(base))
    adapters: list[str | None] = [[None, *names][i % 3] for i in range(len(rows))]

    got = multi.embed(rows, adapters, pooling)  # one padded forward for every row

    assert got.shape == (len(rows), plain.config.hidden_size if base != "t5" else plain.config.d_model)
    for i, (ids, adapter) in enumerate(zip(rows, adapters)):
        hidden = _peft_hidden(oracles[adapter], base, ids)  # (L, d)
        want = {"cls": hidden[0], "last": hidden[-1], "mean": hidden.mean(dim=0)}[expected]
        assert torch.allclose(got[i], want, atol=TOL), (base, i, adapter, (got[i] - want).abs().max())
        if adapter is not None:  # the adapter matters: the base's embedding differs
            base_hidden = _peft_hidden(plain, base, ids)
            base_want = {"cls": base_hidden[0], "last": base_hidden[-1], "mean": base_hidden.mean(dim=0)}
            assert (got[i] - base_want[expected]).abs().max() > 1e-3


def test_pool_rules_on_both_padding_sides() -> None:
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert torch.equal(pool(hidden, left, "cls"), torch.stack([hidden[0, 2], hidden[1, 0]]))
    assert torch.equal(pool(hidden, left, "last"), torch.stack([hidden[0, 3], hidden[1, 3]]))
    assert torch.equal(pool(hidden, right, "last"), torch.stack([hidden[0, 1], hidden[1, 3]]))
    assert torch.allclose(
        pool(hidden, right, "mean"), torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)])
    )
    with pytest.raises(ValueError, match="pooling 'max'"):
        pool(hidden, left, "max")  # type: ignore[arg-type]
