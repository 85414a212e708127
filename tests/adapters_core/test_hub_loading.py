"""Loading from a Hub id with no network: a pre-populated HF cache, HF_HUB_OFFLINE=1, revision, subfolder."""

from __future__ import annotations

import os
import shutil

import peft
import pytest
import torch
from tiny_models import batch, max_abs_diff, perturb_adapter_weights, tiny_llama

from adapters_core import AdapterConfig, AdapterModel, AdapterNotFoundError, LoraConfig

pytestmark = pytest.mark.filterwarnings("ignore")
MAIN, V1 = "a" * 40, "b" * 40  # commit hashes of two snapshots


def _save_peft_adapter(path: str, seed: int, subfolder_adapter: bool = False) -> None:
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    if subfolder_adapter:
        model.add_adapter("other", peft.LoraConfig(r=2, target_modules=["k_proj"]))
    perturb_adapter_weights(model, seed=seed)
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """`models--owner--tiny-lora/{refs/main, refs/v1, snapshots/<hash>/...}`, as huggingface_hub lays it out."""
    cache = str(tmp_path_factory.mktemp("hf_cache"))
    repo = os.path.join(cache, "models--owner--tiny-lora")
    for ref, commit, seed in (("main", MAIN, 1), ("v1", V1, 2)):
        _save_peft_adapter(os.path.join(repo, "snapshots", commit), seed, subfolder_adapter=ref == "main")
        os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
        with open(os.path.join(repo, "refs", ref), "w") as fh:
            fh.write(commit)
    return cache


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch("llama")).logits


def _peft_logits(path: str, subfolder: str | None = None) -> torch.Tensor:
    model = peft.PeftModel.from_pretrained(tiny_llama(), os.path.join(path, subfolder) if subfolder else path)
    return _logits(model.eval())


def test_offline_hub_id_reads_the_cache(hf_cache: str, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = os.path.join(hf_cache, "models--owner--tiny-lora", "snapshots")
    model = AdapterModel.from_pretrained(tiny_llama(), "owner/tiny-lora", cache_dir=hf_cache)
    assert max_abs_diff(_logits(model), _peft_logits(os.path.join(snapshot, MAIN))) <= 1e-4

    pinned = AdapterModel.from_pretrained(tiny_llama(), "owner/tiny-lora", revision="v1", cache_dir=hf_cache)
    assert max_abs_diff(_logits(pinned), _peft_logits(os.path.join(snapshot, V1))) <= 1e-4
    assert max_abs_diff(_logits(pinned), _logits(model)) > 1e-3  # a different snapshot really was read

    by_hash = AdapterModel.from_pretrained(tiny_llama(), "owner/tiny-lora", revision=V1, cache_dir=hf_cache)
    assert max_abs_diff(_logits(by_hash), _logits(pinned)) == 0.0


def test_subfolder_and_load_adapter_from_the_hub(hf_cache: str, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = os.path.join(hf_cache, "models--owner--tiny-lora", "snapshots", MAIN)
    config = AdapterConfig.from_pretrained("owner/tiny-lora", subfolder="other", cache_dir=hf_cache)
    assert isinstance(config, LoraConfig) and config.r == 2
    model = AdapterModel.from_pretrained(
        tiny_llama(), "owner/tiny-lora", subfolder="other", cache_dir=hf_cache
    )
    assert max_abs_diff(_logits(model), _peft_logits(snapshot, "other")) <= 1e-4
    model.load_adapter("owner/tiny-lora", "main_default", cache_dir=hf_cache)
    model.set_adapter("main_default")
    assert max_abs_diff(_logits(model), _peft_logits(snapshot)) <= 1e-4


def test_missing_from_the_cache_says_offline(hf_cache: str, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AdapterNotFoundError, match="HF_HUB_OFFLINE is set"):
        AdapterModel.from_pretrained(tiny_llama(), "owner/tiny-lora", subfolder="nope", cache_dir=hf_cache)
    with pytest.raises(AdapterNotFoundError):
        AdapterModel.from_pretrained(tiny_llama(), "owner/absent", cache_dir=hf_cache)
    broken = str(tmp_path / "cache")
    shutil.copytree(hf_cache, broken)
    os.remove(
        os.path.join(broken, "models--owner--tiny-lora", "snapshots", MAIN, "adapter_model.safetensors")
    )
    with pytest.raises(AdapterNotFoundError, match=r"no adapter_model\.safetensors"):
        AdapterModel.from_pretrained(tiny_llama(), "owner/tiny-lora", cache_dir=broken)


def test_local_directory_wins_and_missing_local_path_is_clear(tmp_path) -> None:
    with pytest.raises(AdapterNotFoundError, match="neither an existing local directory nor a Hub repo id"):
        AdapterModel.from_pretrained(tiny_llama(), str(tmp_path / "a" / "b" / "c"))
