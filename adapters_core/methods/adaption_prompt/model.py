"""`AdaptionPromptModel`: the `AdapterTuner` of LLaMA-Adapter (reference §12).

PEFT swaps the last `adapter_layers` attention modules for wrappers. Here the transformers module tree stays as
it is: a forward hook on each of those attention modules adds the active adapter's gated prompt-attention term
to the module's output. Parameters live in `adaption_prompt_layers[<adapter>][i]` (one per target module), and
are saved under PEFT's keys `base_model.model.<path>.adaption_prompt` / `.adaption_gate`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ...attr_forwarding import ForwardingModule
from ...config import AdapterConfig
from ...errors import AdapterConfigError, AdapterShapeError, AdapterWeightsError, UnsupportedError
from ...peft_names import INJECTED_PREFIX
from ...prompt_learning import generation
from .config import SUPPORTED_TARGETS, AdaptionPromptConfig
from .layer import AdaptionPromptLayer, gpt2_adapter_output, llama_adapter_output

_PARAMS = ("adaption_prompt", "adaption_gate")


class AdaptionPromptModel(ForwardingModule):
    """LLaMA-Adapter over a Llama, Mistral or GPT-2 model (PEFT's supported architectures)."""

    # Missing attributes: the transformers model's (`config`, `device`, ...)
    _forward_to: ClassVar[str] = "model"

    model: Any  # the transformers model (typed loosely: its attributes are model-specific)

    def __init__(self, model: nn.Module, config: AdapterConfig, adapter_name: str = "default") -> None:
        super().__init__()
        model_type = getattr(model.config, "model_type", None)
        if model_type not in SUPPORTED_TARGETS:
            raise UnsupportedError(
                f"LLaMA-Adapter (ADAPTION_PROMPT) supports model types {sorted(SUPPORTED_TARGETS)} (as PEFT does), "
                f"not {model_type!r} ({type(model).__name__}). Use LoRA, IA3 or prompt tuning for this model."
            )
        self.model = model
        self.model_type: str = model_type
        self.peft_config: dict[str, AdapterConfig] = {}
        self.adaption_prompt_layers = nn.ModuleDict()
        self.active_adapter: str | None = None
        self._enabled = True
        self._targets: dict[str, list[str]] = {}  # adapter -> adapted attention module paths
        self._hooked: dict[str, Any] = {}  # path -> hook handle (one hook per module, shared by adapters)
        model.requires_grad_(False)
        self.add_adapter(adapter_name, config)

    # -- adapters ------------------------------------------------------------------------------------------
    def add_adapter(self, adapter_name: str, config: AdapterConfig) -> None:
        if not isinstance(config, AdaptionPromptConfig):
            raise AdapterConfigError(
                f"AdaptionPromptModel takes an AdaptionPromptConfig, got {type(config).__name__}."
            )
        if adapter_name in self.peft_config:
            raise AdapterConfigError(f"an adapter named {adapter_name!r} already exists; pick another name.")
        if config.adapter_len is None or config.adapter_layers is None:
            raise AdapterConfigError(
                "AdaptionPromptConfig needs adapter_len and adapter_layers (e.g. 10 and 30)."
            )
        if config.target_modules is None:
            config.target_modules = SUPPORTED_TARGETS[self.model_type]
        paths = [name for name, _ in self.model.named_modules() if name.endswith("." + config.target_modules)]
        if len(paths) < config.adapter_layers:
            raise AdapterConfigError(
                f"adapter_layers={config.adapter_layers}, but the model has only {len(paths)} modules named "
                f"{config.target_modules!r}; lower adapter_layers."
            )
        paths = paths[-config.adapter_layers :]  # the top layers, in module order
        layers = nn.ModuleList()
        for path in paths:
            attn: Any = self.model.get_submodule(path)
            ref = attn.q_proj.weight if self.model_type != "gpt2" else attn.c_proj.weight
            dtype = ref.dtype if ref.dtype.is_floating_point else torch.float32
            layers.append(
                AdaptionPromptLayer(config.adapter_len, self.model.config.hidden_size, dtype, ref.device)
            )
            if path not in self._hooked:
                self._hooked[path] = attn.register_forward_hook(self._make_hook(path), with_kwargs=True)
        # No freezing in inference mode: PEFT's `_freeze_adapter` looks for the adapter name in parameter names,
        # which these lack, so PEFT counts them as trainable and so do we (print_trainable_parameters parity).
        self.adaption_prompt_layers[adapter_name] = layers
        self._targets[adapter_name] = paths
        self.peft_config[adapter_name] = config
        if self.active_adapter is None:
            self.active_adapter = adapter_name

    def set_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise AdapterConfigError(
                f"no adapter named {adapter_name!r}; loaded: {sorted(self.peft_config)}."
            )
        self.active_adapter = adapter_name

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise AdapterConfigError(
                f"no adapter named {adapter_name!r}; loaded: {sorted(self.peft_config)}."
            )
        for name in (self.peft_config, self._targets):
            del name[adapter_name]
        del self.adaption_prompt_layers[adapter_name]
        if self.active_adapter == adapter_name:
            self.active_adapter = next(iter(self.peft_config), None)
        still_used = {p for paths in self._targets.values() for p in paths}
        for path in [p for p in self._hooked if p not in still_used]:
            self._hooked.pop(path).remove()

    def enable_adapters(self, enabled: bool) -> None:
        self._enabled = enabled

    def restore_base_model(self) -> nn.Module:
        """Remove every hook and return the transformers model as it was (after a failed load)."""
        for handle in self._hooked.values():
            handle.remove()
        self._hooked.clear()
        return self.model

    # -- the hook --------------------------------------------------------------------------------------------
    def _make_hook(self, path: str) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            name = self.active_adapter
            if not self._enabled or name is None or path not in self._targets[name]:
                return output
            layers: Any = self.adaption_prompt_layers[name]
            layer = layers[self._targets[name].index(path)]
            hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            out, *rest = output
            if self.model_type == "gpt2":
                extra = gpt2_adapter_output(module, layer, hidden_states)
            else:
                extra = llama_adapter_output(module, layer, hidden_states, kwargs["position_embeddings"])
            return ((out + extra).to(hidden_states.dtype), *rest)

        return hook

    # -- files -----------------------------------------------------------------------------------------------
    def state_dict_to_save(self, adapter_name: str) -> dict[str, torch.Tensor]:
        state = {}
        layers: Any = self.adaption_prompt_layers[adapter_name]
        for path, layer in zip(self._targets[adapter_name], layers):
            for param in _PARAMS:
                state[f"{INJECTED_PREFIX}{path}.{param}"] = getattr(layer, param).detach().cpu()
        return state

    def load_state_dict_from_file(self, adapter_name: str, state: dict[str, torch.Tensor]) -> None:
        paths = self._targets[adapter_name]
        layers: Any = self.adaption_prompt_layers[adapter_name]
        expected = {
            f"{INJECTED_PREFIX}{p}.{param}": (i, param) for i, p in enumerate(paths) for param in _PARAMS
        }
        unexplained = sorted(set(state) - set(expected))
        if unexplained:
            raise AdapterWeightsError(
                f"adapter {adapter_name!r}: tensors {unexplained[:4]} are not LLaMA-Adapter tensors of the adapted "
                f"modules {paths} (adapter_layers={len(paths)}); the file and config disagree."
            )
        missing = sorted(set(expected) - set(state))
        if missing:
            raise AdapterWeightsError(f"adapter {adapter_name!r}: the file lacks {missing[:4]}.")
        with torch.no_grad():
            for key, (i, param) in expected.items():
                target = getattr(layers[i], param)
                if tuple(state[key].shape) != tuple(target.shape):
                    raise AdapterShapeError(
                        f"adapter {adapter_name!r}: {key} has shape {tuple(state[key].shape)}, this model needs "
                        f"{tuple(target.shape)} (adapter_len, hidden_size); it was trained for another base model."
                    )
                target.copy_(state[key].to(target))

    # -- running ---------------------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def generate(
        self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """Greedy or sampled decoding consistent with `forward` (prompt_learning/generation.py)."""
        if input_ids is None:
            input_ids = kwargs.pop("inputs", None)
        if input_ids is None:
            raise ValueError("generate() needs input_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        opts = generation.decode_options(self.model, input_ids.shape[1], kwargs)
        first = {"input_ids": input_ids, "attention_mask": attention_mask}
        return generation.decode_causal(self.model, input_ids, first, opts)
