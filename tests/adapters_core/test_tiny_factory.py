"""adapters_core/tiny.py, the one factory of tiny bases (tests, examples, demos, benchmark): the same arguments
give the same weights, overrides reach the config, and an unknown kind is refused by name."""

from __future__ import annotations

import pytest
import torch

from adapters_core.tiny import tiny_config, tiny_model


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert", "t5"])
def test_same_arguments_same_weights(kind: str) -> None:
    assert _same(tiny_model(kind, 3), tiny_model(kind, 3))  # type: ignore[arg-type]
    assert not _same(tiny_model(kind, 3), tiny_model(kind, 4))  # type: ignore[arg-type]


def test_overrides_reach_the_config() -> None:
    model = tiny_model("llama", vocab_size=300, hidden_size=32, num_key_value_heads=4, pad_token_id=None)
    assert model.get_input_embeddings().weight.shape == (300, 32)
    assert model.config.num_key_value_heads == 4 and model.config.pad_token_id is None
    bert = tiny_config("bert", num_labels=2, id2label={0: "negative", 1: "positive"})
    assert bert.num_labels == 2 and bert.id2label[1] == "positive"


def test_unknown_kind_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"unknown tiny model kind 'mamba'.*'llama'"):
        tiny_config("mamba")  # type: ignore[arg-type]
