"""PEFT ⇄ Swapyard parity cases for LoRA, DoRA, AdaLoRA and IA3 on the four tiny bases, and the table.

Each `Case` is run once (`run_case`): real PEFT creates the adapter, every adapter tensor is perturbed (LoRA B
starts at zero and IA3 at one), PEFT saves it; Swapyard loads it and also creates the same adapter itself,
perturbed identically (the parameter names and order are PEFT's), saves it, and PEFT loads that file.

    .venv/bin/python tests/adapters_core/parity_table.py      # prints the method × base table
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any

import peft
import torch
from safetensors.torch import load_file

# As a script, this folder (named like the package) must not shadow `adapters_core`: repo root first.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from tiny_models import BUILDERS, batch, max_abs_diff, perturb_adapter_weights

import adapters_core
from adapters_core.adapter_model import AdapterModel, get_adapter_model

TASK = {"llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM", "bert": "SEQ_CLS", "t5": "SEQ_2_SEQ_LM"}
TOL = 1e-4

# AdaLoRA budget-allocator emulation: the kept singular triplets per module (init_r = 6).
LLAMA_MASKS = {
    "model.layers.0.self_attn.q_proj.lora_E": [True, True, True, True, True, False],
    "model.layers.0.self_attn.v_proj.lora_E": [False, True, True, True, True, False],
    "model.layers.1.self_attn.q_proj.lora_E": [False, True, True, True, False, False],
    "model.layers.1.self_attn.v_proj.lora_E": [True, False, True, False, False, False],
}
GPT2_MASKS = {
    "transformer.h.0.attn.c_attn.lora_E": [True, False, True, True, False, True],
    "transformer.h.1.attn.c_attn.lora_E": [False, False, True, False, False, False],
}
T5_MASKS = {
    "encoder.block.0.layer.0.SelfAttention.q.lora_E": [True, True, False, False, True, True],
    "decoder.block.1.layer.1.EncDecAttention.v.lora_E": [False, True, False, False, False, False],
}
ADALORA = {"init_r": 6, "target_r": 3, "lora_alpha": 12, "total_step": 10}


@dataclass(frozen=True)
class Case:
    name: str
    base: str
    config_cls: str  # "LoraConfig" | "AdaLoraConfig" | "IA3Config" (same name in peft and adapters_core)
    kwargs: dict[str, Any] = field(default_factory=dict)
    masks: dict[str, list[bool]] | None = None  # AdaLoRA rank_pattern set "by the allocator"
    # PEFT's own save→load changes this adapter's outputs (AdaLoRA lora_alpha=0, reference §7.2): compare
    # PEFT's load of our file with *our* load of it instead of with the live model.
    roundtrip_changes_outputs: bool = False
    # Merging is not an identity here in PEFT either: the tied wte/lm_head (GPT-2) takes the embedding delta
    # as an output-layer delta too. Such cases are checked against PEFT's merged model instead.
    merge_is_lossy: bool = False

    @property
    def method(self) -> str:
        if self.config_cls == "LoraConfig":
            return "DoRA" if self.kwargs.get("use_dora") else "LoRA"
        return {"AdaLoraConfig": "AdaLoRA", "IA3Config": "IA3"}[self.config_cls]

    def config(self, library: Any) -> Any:
        return getattr(library, self.config_cls)(task_type=TASK[self.base], **self.kwargs)


QV = {"r": 4, "lora_alpha": 8}
CASES = [
    Case("list targets", "llama", "LoraConfig", {**QV, "target_modules": ["q_proj", "v_proj", "up_proj"]}),
    Case(
        "regex + rsLoRA",
        "llama",
        "LoraConfig",
        {
            **QV,
            "use_rslora": True,
            "target_modules": r".*\.layers\.1\.(self_attn\.(q_proj|v_proj)|mlp\.down_proj)",
        },
    ),
    Case(
        "rank/alpha pattern",
        "llama",
        "LoraConfig",
        {
            **QV,
            "target_modules": ["q_proj", "v_proj", "up_proj"],
            "rank_pattern": {"v_proj": 2, r"model\.layers\.1\.mlp\.up_proj": 6},
            "alpha_pattern": {"q_proj": 32, r"layers\.0\.mlp\.up_proj": 3},
        },
    ),
    Case(
        "layers_to_transform",
        "llama",
        "LoraConfig",
        {
            **QV,
            "target_modules": ["q_proj", "v_proj"],
            "layers_to_transform": [1],
            "layers_pattern": "layers",
        },
    ),
    Case("all-linear", "llama", "LoraConfig", {**QV, "target_modules": "all-linear"}),
    Case("default targets", "llama", "LoraConfig", dict(QV)),
    Case("embedding", "llama", "LoraConfig", {**QV, "target_modules": ["embed_tokens", "q_proj", "v_proj"]}),
    Case(
        "lm_head modules_to_save",
        "llama",
        "LoraConfig",
        {**QV, "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["lm_head"]},
    ),
    Case(
        "DoRA linear",
        "llama",
        "LoraConfig",
        {**QV, "use_dora": True, "target_modules": ["q_proj", "v_proj", "down_proj"]},
    ),
    Case(
        "DoRA embedding",
        "llama",
        "LoraConfig",
        {**QV, "use_dora": True, "target_modules": ["embed_tokens", "q_proj"]},
    ),
    Case(
        "rank_pattern masks",
        "llama",
        "AdaLoraConfig",
        {**ADALORA, "target_modules": ["q_proj", "v_proj"]},
        LLAMA_MASKS,
    ),
    Case(
        "lora_alpha=0",
        "llama",
        "AdaLoraConfig",
        {**ADALORA, "lora_alpha": 0, "target_modules": ["q_proj", "v_proj"]},
        LLAMA_MASKS,
        True,
    ),
    Case("feedforward (default)", "llama", "IA3Config", {}),
    Case(
        "no feedforward",
        "llama",
        "IA3Config",
        {"target_modules": ["k_proj", "v_proj"], "feedforward_modules": []},
    ),
    Case(
        "Conv1D", "gpt2", "LoraConfig", {**QV, "target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True}
    ),
    Case(
        "bias=all",
        "gpt2",
        "LoraConfig",
        {**QV, "target_modules": ["c_attn"], "fan_in_fan_out": True, "bias": "all"},
    ),
    Case(
        "bias=lora_only",
        "gpt2",
        "LoraConfig",
        {**QV, "target_modules": ["c_attn"], "fan_in_fan_out": True, "bias": "lora_only"},
    ),
    Case("lora_bias", "gpt2", "LoraConfig", {**QV, "target_modules": ["c_attn"], "lora_bias": True}),
    Case(
        "DoRA Conv1D", "gpt2", "LoraConfig", {**QV, "use_dora": True, "target_modules": ["c_attn", "c_proj"]}
    ),
    Case(
        "tied embedding",
        "gpt2",
        "LoraConfig",
        {**QV, "target_modules": ["wte", "c_attn"]},
        merge_is_lossy=True,
    ),
    Case(
        "rank_pattern masks", "gpt2", "AdaLoraConfig", {**ADALORA, "target_modules": ["c_attn"]}, GPT2_MASKS
    ),
    Case("feedforward (default)", "gpt2", "IA3Config", {}),
    Case("classifier head", "bert", "LoraConfig", dict(QV)),
    Case(
        "DoRA + head",
        "bert",
        "LoraConfig",
        {**QV, "use_dora": True, "target_modules": ["query", "value", "dense"]},
    ),
    Case(
        "bias=all + head", "bert", "LoraConfig", {**QV, "target_modules": ["query", "value"], "bias": "all"}
    ),
    Case("no masks", "bert", "AdaLoraConfig", {**ADALORA, "target_modules": ["query", "value"]}),
    Case("feedforward (default)", "bert", "IA3Config", {}),
    Case(
        "no feedforward",
        "bert",
        "IA3Config",
        {"target_modules": ["query", "value"], "feedforward_modules": []},
    ),
    Case("q,v", "t5", "LoraConfig", {**QV, "target_modules": ["q", "v"]}),
    Case(
        "all-linear + rsLoRA",
        "t5",
        "LoraConfig",
        {"r": 4, "lora_alpha": 1, "target_modules": "all-linear", "use_rslora": True},
    ),
    Case("DoRA", "t5", "LoraConfig", {**QV, "use_dora": True, "target_modules": ["q", "k", "wo"]}),
    Case("rank_pattern masks", "t5", "AdaLoraConfig", {**ADALORA, "target_modules": ["q", "v"]}, T5_MASKS),
    Case("feedforward (default)", "t5", "IA3Config", {}),
]


def case_id(case: Case) -> str:
    return re.sub(r"[^A-Za-z0-9=_+.-]+", "_", f"{case.base}-{case.method}-{case.name}")


def forward(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _trained_bias(name: str, bias: str) -> bool:
    if "lora_" in name or not name.endswith(".bias"):
        return False
    return bias == "all" or (bias == "lora_only" and name.endswith(".base_layer.bias"))


@torch.no_grad()
def prepare_adapter(model: torch.nn.Module, case: Case, seed: int = 1) -> None:
    """Non-trivial adapter values: perturb; modules_to_save copies get their own values; AdaLoRA masks."""
    perturb_adapter_weights(model, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    for name, p in model.named_parameters():
        if ".modules_to_save." in name:
            p.add_(0.5 * torch.randn(p.shape, generator=g))
        elif _trained_bias(name, case.kwargs.get("bias", "none")):
            p.add_(0.2 * torch.randn(p.shape, generator=g))  # trained biases differ from the base's
    for mask_key, mask in (case.masks or {}).items():
        module = model.get_submodule("base_model.model." + mask_key.removesuffix(".lora_E"))
        keep = torch.tensor(mask)
        module.lora_E["default"][~keep] = 0.0  # what the allocator does to pruned triplets


@dataclass
class CaseRun:
    case: Case
    inputs: dict[str, torch.Tensor]
    base_logits: torch.Tensor
    peft_dir: str
    ours_dir: str
    peft_logits: torch.Tensor  # PEFT loading its own file
    peft_disabled: torch.Tensor
    ours_loaded: AdapterModel  # Swapyard loading PEFT's file
    ours_logits: torch.Tensor
    ours_created_logits: torch.Tensor  # Swapyard's own adapter, before saving
    peft_on_ours_logits: torch.Tensor  # PEFT loading Swapyard's file
    ours_reloaded_logits: torch.Tensor  # Swapyard loading its own file
    counts: dict[str, tuple[int, int]]
    peft_keys: dict[str, tuple[int, ...]]
    ours_keys: dict[str, tuple[int, ...]]
    peft_json: dict[str, Any]
    ours_json: dict[str, Any]


def _shapes(directory: str) -> dict[str, tuple[int, ...]]:
    return {
        k: tuple(v.shape) for k, v in load_file(os.path.join(directory, "adapter_model.safetensors")).items()
    }


def _json(directory: str) -> dict[str, Any]:
    with open(os.path.join(directory, "adapter_config.json")) as fh:
        return json.load(fh)


def run_case(case: Case, workdir: str) -> CaseRun:
    warnings.simplefilter("ignore")
    build = BUILDERS[case.base]
    inputs = batch(case.base)
    base_logits = forward(build(), inputs)
    peft_dir, ours_dir = os.path.join(workdir, "peft"), os.path.join(workdir, "ours")

    peft_config = case.config(peft)
    if case.masks:
        peft_config.rank_pattern = dict(case.masks)
    peft_model = peft.get_peft_model(build(), peft_config)
    counts = {"peft_created": peft_model.get_nb_trainable_parameters()}
    prepare_adapter(peft_model, case)
    peft_model.save_pretrained(peft_dir)

    peft_loaded = peft.PeftModel.from_pretrained(build(), peft_dir).eval()
    counts["peft_loaded"] = peft_loaded.get_nb_trainable_parameters()
    peft_logits = forward(peft_loaded, inputs)
    with peft_loaded.disable_adapter():
        peft_disabled = forward(peft_loaded, inputs)

    ours_loaded = AdapterModel.from_pretrained(build(), peft_dir)
    counts["ours_loaded"] = ours_loaded.get_nb_trainable_parameters()
    ours_logits = forward(ours_loaded, inputs)

    ours_config = case.config(adapters_core)
    if case.masks:
        ours_config.rank_pattern = dict(case.masks)
    ours_created = get_adapter_model(build(), ours_config)
    counts["ours_created"] = ours_created.get_nb_trainable_parameters()
    prepare_adapter(ours_created, case)
    ours_created.eval()
    ours_created_logits = forward(ours_created, inputs)
    ours_created.save_pretrained(ours_dir)
    peft_on_ours = peft.PeftModel.from_pretrained(build(), ours_dir).eval()
    ours_reloaded = AdapterModel.from_pretrained(build(), ours_dir)
    return CaseRun(
        case=case,
        inputs=inputs,
        base_logits=base_logits,
        peft_dir=peft_dir,
        ours_dir=ours_dir,
        peft_logits=peft_logits,
        peft_disabled=peft_disabled,
        ours_loaded=ours_loaded,
        ours_logits=ours_logits,
        ours_created_logits=ours_created_logits,
        peft_on_ours_logits=forward(peft_on_ours, inputs),
        ours_reloaded_logits=forward(ours_reloaded, inputs),
        counts=counts,
        peft_keys=_shapes(peft_dir),
        ours_keys=_shapes(ours_dir),
        peft_json=_json(peft_dir),
        ours_json=_json(ours_dir),
    )


def reverse_diff(run: CaseRun) -> float:
    """PEFT loading Swapyard's file vs Swapyard's adapter (its reload when PEFT's own round trip is lossy)."""
    ours = run.ours_reloaded_logits if run.case.roundtrip_changes_outputs else run.ours_created_logits
    return max_abs_diff(run.peft_on_ours_logits, ours)


def merged_vs_unmerged(run: CaseRun) -> float:
    model = run.ours_loaded
    model.merge_adapter()
    try:
        return max_abs_diff(forward(model, run.inputs), run.ours_logits)
    finally:
        model.unmerge_adapter()


def main() -> None:
    rows = []
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            run = run_case(case, tmp)
            rows.append(
                (
                    case.method,
                    case.base,
                    case.name,
                    max_abs_diff(run.ours_logits, run.peft_logits),
                    reverse_diff(run),
                    merged_vs_unmerged(run),
                    max_abs_diff(run.ours_logits, run.base_logits),
                )
            )
    print(
        "| method | base | case | PEFT file → Swapyard | Swapyard file → PEFT | merged vs unmerged | |adapter effect| |"
    )
    print("|---|---|---|---|---|---|---|")
    for method, base, name, fwd, rev, merged, effect in rows:
        print(f"| {method} | {base} | {name} | {fwd:.2e} | {rev:.2e} | {merged:.2e} | {effect:.2e} |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
