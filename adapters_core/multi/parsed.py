"""An adapter file turned into per-module tensors: what MultiAdapterModel writes into its pools.

PEFT's state dict (reference §3) is parsed once and checked against the base model — every value finite,
the file's modules exactly those the config targets (agreement.py), every tensor fitting its module, and a
probe forward of every changed module whose outputs must stay finite (probe.py) — and normalised: AdaLoRA
becomes exact LoRA (§7.3), DoRA keeps its magnitude, IA3 knows its side, and full base tensors
(modules_to_save heads, `bias="all"` biases, saved embeddings) become per-adapter overrides. Nothing here
touches the model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import AdapterConfig
from ..errors import AdapterShapeError, AdapterWeightsError, NoTargetModulesError, UnsupportedError
from ..methods.ia3.config import IA3Config
from ..methods.lora.config import LoraConfig
from ..methods.lora.layer import lora_scaling
from ..methods.lora.model import rank_and_alpha
from ..peft_names import BASE_LAYER_INFIX, INJECTED_PREFIX, PROMPT_PREFIX
from ..registry import ServingForm, get_method, peft_type_name
from ..targeting import is_feedforward
from ..weights_io import check_finite
from .agreement import IA3_KEYS, LORA_KEYS, check_agreement
from .probe import ProbeResult, probe_adapter
from .prompt_parse import PromptTensors, parse_prompt_adapter

(IA3_SUFFIX,) = IA3_KEYS  # IA3 saves one tensor per module


@dataclass
class LoraTensors:
    """One module's LoRA: `delta(x) = scale · x Aᵀ Bᵀ` (Linear layout even for Conv1D, as PEFT saves it).

    a: (r, in) — for an Embedding (r, num_embeddings); b: (out, r) — for an Embedding (embedding_dim, r).
    magnitude: DoRA's `m`, (out,) or (embedding_dim,), None for plain LoRA.
    bias: `lora_B.bias` (out,) when the config has `lora_bias` (added as `scale · bias`), else None.
    """

    a: torch.Tensor
    b: torch.Tensor
    scale: float
    magnitude: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])


@dataclass
class ParsedAdapter:
    """Everything one adapter changes, keyed by HF module path (`model.named_modules()` names)."""

    config: AdapterConfig
    lora: dict[str, LoraTensors] = field(default_factory=dict)
    ia3: dict[str, tuple[torch.Tensor, bool]] = field(default_factory=dict)  # path -> (l (F,), feedforward)
    overrides: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # path -> {param: tensor}
    prompt: PromptTensors | None = None  # prompt tuning, P-tuning, prefix, LLaMA-Adapter (prompt_parse.py)
    content_hash: str = ""
    probe: ProbeResult = field(default_factory=lambda: ProbeResult(None, None))  # validation's probe forward

    @property
    def peft_type(self) -> str:
        """PEFT's name of the method, e.g. "LORA" (equal to the `PeftType` member of PEFT's methods)."""
        return peft_type_name(self.config.peft_type)

    @property
    def nbytes(self) -> int:
        tensors = [t for lt in self.lora.values() for t in (lt.a, lt.b, lt.magnitude) if t is not None]
        tensors += [v for v, _ in self.ia3.values()]
        tensors += [t for d in self.overrides.values() for t in d.values()]
        tensors += self.prompt.tensors() if self.prompt is not None else []
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def max_rank(self) -> int:
        return max((lt.rank for lt in self.lora.values()), default=0)


def content_hash(config: AdapterConfig, state: dict[str, torch.Tensor]) -> str:
    """sha256 over the config and every tensor (name, dtype, shape, bytes): the adapter's identity."""
    h = hashlib.sha256()
    h.update(repr(sorted(config.to_dict().items(), key=lambda kv: kv[0])).encode())
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
    return h.hexdigest()


def _in_out(module: Any, path: str) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        w = module.weight  # (in, out)
        return int(w.shape[0]), int(w.shape[1])
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    raise UnsupportedError(
        f"{path}: adapters on a {type(module).__name__} are not supported in a mixed batch "
        "(nn.Linear, Conv1D and nn.Embedding are)."
    )


def _module(modules: dict[str, nn.Module], path: str, key: str) -> nn.Module:
    try:
        return modules[path]
    except KeyError:
        raise NoTargetModulesError(
            f"{key}: the base model has no module {path!r}; the adapter was trained for another architecture."
        ) from None


def _shape_error(path: str, what: str, got: tuple[int, ...], want: str) -> AdapterShapeError:
    return AdapterShapeError(
        f"{path}: {what} has shape {got} but {want}; the adapter was trained for another base model."
    )


def parse_adapter(
    config: AdapterConfig, state: dict[str, torch.Tensor], modules: dict[str, nn.Module]
) -> ParsedAdapter:
    """Check `state` (PEFT keys) against the base model's `modules` (path -> module) and normalise it.

    Raises `AdapterShapeError`, `AdapterWeightsError` (a non-finite value, a key the config does not
    explain, a targeted module without tensors, outputs that overflow on the probe), `NoTargetModulesError`
    (nothing adapted, or a path the model lacks), `UnsupportedError` (a method the mixed batch does not serve).
    """
    check_finite(state, source="adapter")
    digest = content_hash(config, state)
    spec = get_method(config.peft_type)  # the method table says how a mixed batch serves it
    serving = spec.serving
    if serving is ServingForm.PROMPT:
        # Prompt-family branch (owned by multi/prompt_parse.py): tables checked against the base, heads as overrides.
        full_config, prompt, heads = parse_prompt_adapter(config, state, modules)
        parsed = ParsedAdapter(config=full_config, prompt=prompt)
        for key, tensor in heads.items():
            _add_override(parsed, full_config, key, key.removeprefix(PROMPT_PREFIX), tensor, modules)  # type: ignore[arg-type]
        parsed.content_hash = digest
        parsed.probe = probe_adapter(parsed, modules)
        return parsed
    if serving is ServingForm.UNSUPPORTED:
        raise UnsupportedError(
            f"peft_type {peft_type_name(config.peft_type)} is not yet served in a mixed batch; load it with "
            "AdapterModel."
        )
    check_agreement(config, state, modules)  # before a conversion, against the file as saved
    if spec.to_lora is not None:  # AdaLoRA: served as the exact LoRA it converts to
        config_lora, state = spec.to_lora(config, state)
        parsed = _parse_injected(config_lora, state, modules, ServingForm.LORA)  # type: ignore[arg-type]
        parsed.config = config
    else:
        parsed = _parse_injected(config, state, modules, serving)  # type: ignore[arg-type]
    parsed.content_hash = digest
    if not parsed.lora and not parsed.ia3:
        raise NoTargetModulesError(
            f"the {parsed.peft_type} adapter adapts no module of this base model (its file has no "
            "adapter tensors); check target_modules and that it was saved from this architecture."
        )
    parsed.probe = probe_adapter(parsed, modules)
    return parsed


def _parse_injected(
    config: LoraConfig | IA3Config,
    state: dict[str, torch.Tensor],
    modules: dict[str, nn.Module],
    serving: ServingForm,
) -> ParsedAdapter:
    parsed = ParsedAdapter(config=config)
    is_lora = serving is ServingForm.LORA
    pieces: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if not key.startswith(INJECTED_PREFIX):
            raise AdapterWeightsError(
                f"{key}: expected keys starting with {INJECTED_PREFIX!r} (PEFT layout)."
            )
        rest = key.removeprefix(INJECTED_PREFIX)
        suffix = (
            next((s for s in LORA_KEYS if rest.endswith(s)), None)
            if is_lora
            else (IA3_SUFFIX if rest.endswith(IA3_SUFFIX) else None)
        )
        if suffix is not None:
            pieces.setdefault(rest.removesuffix(suffix), {})[suffix] = tensor.float()
            continue
        if any(rest.endswith(s) for s in (*LORA_KEYS, IA3_SUFFIX, ".lora_E")):
            raise AdapterWeightsError(
                f"{key}: a tensor of another method (or of `lora_bias`) in a {config.peft_type} adapter; "
                "the config does not explain it."
            )
        if ".modules_to_save." in rest or ".original_module." in rest:
            # bias="all" makes PEFT also write the head wrapper's inner biases; PEFT ignores them on load
            # (the head's own copy is saved under its plain key), and so do we.
            continue
        _add_override(parsed, config, key, rest.replace(BASE_LAYER_INFIX, "."), tensor, modules)

    for path, tensors in pieces.items():
        module = _module(modules, path, INJECTED_PREFIX + path)
        n_in, n_out = _in_out(module, path)
        if is_lora:
            parsed.lora[path] = _lora_tensors(config, path, tensors, module, n_in, n_out)  # type: ignore[arg-type]
        else:
            parsed.ia3[path] = _ia3_vector(config, path, tensors[IA3_SUFFIX], n_in, n_out)  # type: ignore[arg-type]
    return parsed


def _lora_tensors(
    config: LoraConfig, path: str, t: dict[str, torch.Tensor], module: nn.Module, n_in: int, n_out: int
) -> LoraTensors:
    emb = isinstance(module, nn.Embedding)
    a_key, b_key = (".lora_embedding_A", ".lora_embedding_B") if emb else (".lora_A.weight", ".lora_B.weight")
    if a_key not in t or b_key not in t:
        raise AdapterWeightsError(f"{path}: LoRA needs both {a_key[1:]} and {b_key[1:]}; one is missing.")
    a, b = t[a_key], t[b_key]
    if a.dim() != 2 or a.shape[1] != n_in:
        raise _shape_error(path, a_key[1:], tuple(a.shape), f"the base layer has in_features={n_in}")
    if b.dim() != 2 or b.shape[0] != n_out or b.shape[1] != a.shape[0]:
        raise _shape_error(
            path, b_key[1:], tuple(b.shape), f"expected ({n_out}, {a.shape[0]}) for this base layer and rank"
        )
    r, alpha = rank_and_alpha(config, path)
    if r != a.shape[0]:
        raise _shape_error(path, a_key[1:], tuple(a.shape), f"the config gives this module rank {r}")
    magnitude = t.get(".lora_magnitude_vector")
    if magnitude is not None:
        if not config.use_dora:
            raise AdapterWeightsError(f"{path}: lora_magnitude_vector present but use_dora is false.")
        if magnitude.numel() != n_out:
            raise _shape_error(path, "lora_magnitude_vector", tuple(magnitude.shape), f"out_features={n_out}")
        magnitude = magnitude.flatten()
    elif config.use_dora:
        raise AdapterWeightsError(f"{path}: use_dora is true but lora_magnitude_vector is missing.")
    bias = t.get(".lora_B.bias")
    if bias is not None and (emb or magnitude is not None or bias.shape != (n_out,)):
        raise _shape_error(
            path, "lora_B.bias", tuple(bias.shape), f"a plain LoRA layer with out_features={n_out}"
        )
    return LoraTensors(
        a=a, b=b, scale=lora_scaling(alpha, r, config.use_rslora), magnitude=magnitude, bias=bias
    )


def _ia3_vector(
    config: IA3Config, path: str, vec: torch.Tensor, n_in: int, n_out: int
) -> tuple[torch.Tensor, bool]:
    feedforward = is_feedforward(path, config.feedforward_modules)
    want = (1, n_in) if feedforward else (n_out, 1)
    if tuple(vec.shape) != want:
        raise _shape_error(
            path,
            "ia3_l",
            tuple(vec.shape),
            f"a {'feed-forward' if feedforward else 'non-feed-forward'} IA3 vector for this layer is {want}",
        )
    return vec.flatten(), feedforward


def _add_override(
    parsed: ParsedAdapter,
    config: LoraConfig | IA3Config,
    key: str,
    param_path: str,
    tensor: torch.Tensor,
    modules: dict[str, nn.Module],
) -> None:
    """A full base tensor in the file: a modules_to_save copy, a trained bias, or a saved embedding."""
    module_path, _, param = param_path.rpartition(".")
    module = _module(modules, module_path, key)
    base = getattr(module, param, None)
    if not isinstance(base, torch.Tensor):
        raise AdapterWeightsError(f"{key}: module {module_path!r} has no tensor {param!r} to replace.")
    # PEFT copies a modules_to_save entry whole: RoBERTa's `classifier` saves classifier.dense and .out_proj
    owners = [module_path.rsplit(".", i)[0] for i in range(module_path.count(".") + 1)]
    head = any(o.endswith(m) for o in owners for m in (config.modules_to_save or ()))
    bias = param == "bias" and getattr(config, "bias", "none") != "none"
    embedding = (
        isinstance(module, nn.Embedding) and BASE_LAYER_INFIX in key.removeprefix(INJECTED_PREFIX) + "."
    )
    if not (head or bias or embedding or BASE_LAYER_INFIX in "." + key.removeprefix(INJECTED_PREFIX)):
        raise AdapterWeightsError(
            f"{key}: the config explains no full copy of {module_path!r} (not in modules_to_save, bias is "
            f"{getattr(config, 'bias', 'none')!r}); the file does not belong to this config."
        )
    if tuple(tensor.shape) != tuple(base.shape) and not head:
        raise _shape_error(module_path, param, tuple(tensor.shape), f"the base has {tuple(base.shape)}")
    if tuple(tensor.shape) == tuple(base.shape) and torch.equal(tensor.to(base.dtype), base.detach().cpu()):
        return  # e.g. the full embedding PEFT saves by default: identical to the base, nothing to override
    parsed.overrides.setdefault(module_path, {})[param] = tensor
