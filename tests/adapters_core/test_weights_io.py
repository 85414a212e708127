"""weights_io: safetensors in PEFT's layout; pickle read weights-only (or refused on request); NaN/Inf refused."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors import safe_open

from adapters_core import AdapterNotFoundError, AdapterWeightsError, UnsafeFormatError
from adapters_core.weights_io import load_adapter_weights, save_adapter_weights


def test_round_trip_with_peft_metadata(tmp_path) -> None:
    base = torch.randn(4, 8)
    state = {"a.lora_A.weight": base, "a.view": base[:, :2].T}  # aliased and non-contiguous
    path = save_adapter_weights(state, tmp_path)
    with safe_open(path, "pt") as fh:
        assert fh.metadata() == {"format": "pt"}
    loaded = load_adapter_weights(str(tmp_path))
    assert torch.equal(loaded["a.lora_A.weight"], base) and torch.equal(loaded["a.view"], base[:, :2].T)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_name_the_tensor(tmp_path, value) -> None:
    bad = torch.zeros(3, 3)
    bad[1, 2] = value
    save_adapter_weights({"ok": torch.ones(2), "m.lora_B.weight": bad}, tmp_path)
    with pytest.raises(AdapterWeightsError, match=r"tensor 'm\.lora_B\.weight' contains NaN or Inf"):
        load_adapter_weights(str(tmp_path))


def test_pickle_read_weights_only_unless_refused(tmp_path) -> None:
    torch.save({"w": torch.ones(2)}, tmp_path / "adapter_model.bin")
    with pytest.raises(UnsafeFormatError, match="allow_pickle=True"):
        load_adapter_weights(str(tmp_path), allow_pickle=False)
    assert torch.equal(load_adapter_weights(str(tmp_path))["w"], torch.ones(2))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_with_code_is_refused(tmp_path) -> None:
    with open(tmp_path / "adapter_model.bin", "wb") as fh:
        pickle.dump({"w": _Evil()}, fh)
    with pytest.raises(AdapterWeightsError, match="cannot be read with weights_only=True"):
        load_adapter_weights(str(tmp_path))


def test_corrupt_and_missing_files(tmp_path) -> None:
    (tmp_path / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterWeightsError, match="corrupt or unreadable safetensors"):
        load_adapter_weights(str(tmp_path))
    os.remove(tmp_path / "adapter_model.safetensors")
    with pytest.raises(AdapterNotFoundError, match=r"no adapter_model\.safetensors"):
        load_adapter_weights(str(tmp_path))
