"""The files a benchmark serves, made offline from a seed: a base, N LoRA adapters, a merged checkpoint.

- The base is a Llama built from a config (adapters_core/tiny.py: the project's one factory of tiny bases)
  next to a word-level tokenizer whose vocabulary is exactly the model's ids (`<pad> <unk> w0 … w{V-3}`), so
  a prompt of n words is n tokens. It has **no end-of-sequence token** (tokenizer, config and generation
  config): every request generates exactly its `max_new_tokens`, on every system, as S-LoRA's `ignore_eos`.
- Adapters are PEFT-format LoRA folders (`adapter_config.json` + `adapter_model.safetensors`, PEFT's keys and
  shapes: `base_model.model.<module>.lora_A.weight (r, in)`, `lora_B.weight (out, r)`), ranks cycling
  through the given list, weights drawn from the adapter's own seed (B non-zero, so each one changes the
  output). Real PEFT loads them (tests/bench/test_fixtures.py).
- The merged checkpoint is the base with adapter 0 merged into its weights (adapters_core's
  `merge_and_unload`): the latency floor of one adapter, served with no adapter at all.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from adapters_core import AdapterModel, LoraConfig
from adapters_core.tiny import tiny_config, tiny_model

SPECIALS = ["<pad>", "<unk>"]  # pad 0, unk 1; no BOS, no EOS (see the module docstring)


@dataclass(frozen=True)
class BaseSpec:
    """A Llama geometry (any LlamaConfig field in `overrides`) and the seed of its weights."""

    vocab_size: int = 2048
    hidden_size: int = 512
    intermediate_size: int = 1376
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 8
    max_position_embeddings: int = 512
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)

    def config_kwargs(self) -> dict[str, Any]:
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "pad_token_id": 0,
            "bos_token_id": None,
            "eos_token_id": None,
            **self.overrides,
        }

    def meta_model(self) -> nn.Module:
        """The base's structure without weights (nothing is allocated)."""
        with torch.device("meta"):
            return _model_class()(tiny_config("llama", **self.config_kwargs()))

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.meta_model().parameters())

    def lora_numbers(self, targets: Sequence[str]) -> int:
        """Elements of LoRA A and B per unit of rank over every target module: sum of (in + out)."""
        return sum(fan_in + fan_out for fan_in, fan_out in lora_shapes(self.meta_model(), targets).values())


@dataclass(frozen=True)
class AdapterSpec:
    """N LoRA adapters: ranks cycle through `ranks` (adapter i has `ranks[i % len(ranks)]`)."""

    n_adapters: int
    ranks: tuple[int, ...] = (8, 16, 32, 64)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    seed: int = 1
    b_scale: float = 0.02
    dtype: str = "float32"  # of the files (PEFT saves the adapter in the model's dtype)

    def rank_of(self, index: int) -> int:
        return self.ranks[index % len(self.ranks)]


def words(vocab_size: int) -> list[str]:
    """The word of every non-special id: `w0 … w{V-3}`."""
    return [f"w{i}" for i in range(vocab_size - len(SPECIALS))]


def adapter_name(index: int) -> str:
    return f"a{index:04d}"


def _model_class() -> Any:
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM


def build_tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + words(vocab_size))}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")


def build_base(spec: BaseSpec, *, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """The base model in memory (random weights from `spec.seed`)."""
    model: Any
    if device == "cpu" and dtype == torch.float32:
        model = tiny_model("llama", spec.seed, **spec.config_kwargs())
    else:  # a large base: initialise straight on the device, in its dtype
        torch.manual_seed(spec.seed)
        with torch.device(device):
            model = _model_class()(tiny_config("llama", **spec.config_kwargs())).to(dtype).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def save_base(model: nn.Module, spec: BaseSpec, directory: Path) -> Path:
    model.save_pretrained(directory)  # type: ignore[operator]
    build_tokenizer(spec.vocab_size).save_pretrained(directory)
    return directory


def lora_shapes(model: nn.Module, targets: Sequence[str]) -> dict[str, tuple[int, int]]:
    """HF module path -> (in_features, out_features) of every nn.Linear whose last name is a target."""
    shapes = {
        name: (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets
    }
    if not shapes:
        raise ValueError(f"no nn.Linear named {list(targets)} in the base; pick other --targets")
    return shapes


def lora_state(
    shapes: dict[str, tuple[int, int]],
    rank: int,
    seed: int,
    b_scale: float,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """PEFT's saved keys for one LoRA adapter (CPU tensors), random weights from `seed` (B non-zero).

    `device` is only where the numbers are drawn (a GPU draws a 7B model's adapters much faster); the same
    seed gives the same weights on the same kind of device.
    """
    g = torch.Generator(device=device).manual_seed(seed)
    state = {}
    for name, (fan_in, fan_out) in shapes.items():
        prefix = f"base_model.model.{name}"
        a = torch.randn(rank, fan_in, generator=g, device=device) / fan_in**0.5
        b = torch.randn(fan_out, rank, generator=g, device=device) * b_scale
        state[f"{prefix}.lora_A.weight"] = a.to(dtype).cpu().contiguous()
        state[f"{prefix}.lora_B.weight"] = b.to(dtype).cpu().contiguous()
    return state


def lora_config(spec: AdapterSpec, rank: int, base_dir: Path) -> LoraConfig:
    return LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=list(spec.target_modules),
        task_type="CAUSAL_LM",
        base_model_name_or_path=str(base_dir),
    )


def write_adapters(
    model: nn.Module,
    spec: AdapterSpec,
    base_dir: Path,
    out_dir: Path,
    *,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write `spec.n_adapters` PEFT-format folders `out_dir/a0000 …`; returns their paths."""
    shapes = lora_shapes(model, spec.target_modules)
    written = []
    for i in range(spec.n_adapters):
        folder = out_dir / adapter_name(i)
        rank = spec.rank_of(i)
        lora_config(spec, rank, base_dir).save_pretrained(folder)
        state = lora_state(
            shapes,
            rank,
            seed=spec.seed * 1_000_003 + i,
            b_scale=spec.b_scale,
            dtype=getattr(torch, spec.dtype),
            device=device,
        )
        save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        written.append(folder)
        if progress is not None:
            progress(1)
    return written


def write_merged(
    base_dir: Path, adapter_dir: Path, out_dir: Path, *, device: str = "cpu", dtype: str = "float32"
) -> Path:
    """The base with `adapter_dir` merged into its weights, saved with the tokenizer."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=getattr(torch, dtype)).to(device)
    merged: Any = AdapterModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (base_dir / name).exists():
            shutil.copy(base_dir / name, out_dir / name)
    return out_dir


@dataclass(frozen=True)
class Fixtures:
    """Where a benchmark's files are."""

    base_dir: Path
    adapters_dir: Path
    merged_dir: Path
    n_adapters: int

    def adapter_dirs(self) -> Iterator[Path]:
        return (self.adapters_dir / adapter_name(i) for i in range(self.n_adapters))


def prepare(
    root: Path,
    base: BaseSpec,
    adapters: AdapterSpec,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    progress: Callable[[int], None] | None = None,
) -> Fixtures:
    """Build the base (on `device`, in `dtype`), the adapters and the merged checkpoint under `root`."""
    fixtures = Fixtures(root / "base", root / "adapters", root / "merged", adapters.n_adapters)
    model = build_base(base, device=device, dtype=getattr(torch, dtype))
    save_base(model, base, fixtures.base_dir)
    write_adapters(
        model, adapters, fixtures.base_dir, fixtures.adapters_dir, device=device, progress=progress
    )
    del model
    merged_from = fixtures.adapters_dir / adapter_name(0)
    write_merged(fixtures.base_dir, merged_from, fixtures.merged_dir, device=device, dtype=dtype)
    (root / "fixtures.json").write_text(
        json.dumps({"base": base.config_kwargs(), "adapters": adapters.__dict__}, default=str, indent=2)
    )
    return fixtures
