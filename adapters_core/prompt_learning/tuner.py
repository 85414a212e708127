"""`PromptLearningTuner`: the `AdapterTuner` (tuners/protocol.py) shared by prompt tuning, P-tuning and prefix
tuning. Each method subclass only says how to build its prompt encoder.

Live layout (PEFT's): `model` (the transformers model, frozen), `prompt_encoder[<adapter>]` (the method's
encoder), classification heads wrapped in `ModulesToSaveWrapper` for SEQ_CLS / TOKEN_CLS / QA.

Two forms of an encoder (reference §8.2):
* training form (`inference_mode=False`): the method's trainable parameters (P-tuning's MLP/LSTM, prefix
  tuning's projection); the table is computed from them.
* inference form (`inference_mode=True`, what loading a file builds): a bare `embedding` holding the table.
Saving writes the table as `prompt_embeddings` in both cases, so files load in PEFT and here alike.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..attr_forwarding import ForwardingModule
from ..config import AdapterConfig, TaskType
from ..errors import AdapterConfigError, AdapterLoadError, AdapterShapeError, AdapterWeightsError
from ..peft_names import PROMPT_EMBEDDINGS_KEY, PROMPT_PREFIX
from ..tuners.modules_to_save import ModulesToSaveWrapper, wrap_modules_to_save
from . import forward as fwd
from . import generation, prefix_cache
from .backbone import find_word_embeddings
from .config import PromptLearningConfig, fill_derived_fields

# Heads PEFT trains and saves with the adapter, per task type (PeftModelFor*.__init__).
TASK_HEADS: dict[TaskType, list[str]] = {
    TaskType.SEQ_CLS: ["classifier", "score"],
    TaskType.TOKEN_CLS: ["classifier", "score"],
    TaskType.QUESTION_ANS: ["qa_outputs"],
}


class PromptEncoderBase(nn.Module):
    """A method's prompt encoder. `embedding` always exists; `table()` is what is used and saved."""

    embedding: nn.Embedding

    @property
    def inference_form(self) -> bool:
        """True when the encoder is the bare table (nothing to compute)."""
        return True

    def table(self) -> torch.Tensor:
        """(rows, width): the prompt (or prefix) table the forward uses."""
        return self.embedding.weight


class PromptLearningTuner(ForwardingModule):
    """Virtual-token adapters over one transformers model (see module docstring)."""

    # Missing attributes: the transformers model's (`config`, `device`, ...)
    _forward_to: ClassVar[str] = "model"

    config_cls: ClassVar[type[PromptLearningConfig]]
    model: Any  # the transformers model (typed loosely: its attributes are model-specific)
    is_prefix: ClassVar[bool] = False  # prefix tuning: KV prefix instead of input embeddings

    def __init__(self, model: nn.Module, config: AdapterConfig, adapter_name: str = "default") -> None:
        super().__init__()
        self.model = model
        self.peft_config: dict[str, AdapterConfig] = {}
        self.prompt_encoder = nn.ModuleDict()
        self.active_adapter: str | None = None
        self._enabled = True
        # Plain attributes (not submodules): the parameters already belong to `model`.
        self.__dict__["_word_embeddings"] = find_word_embeddings(model)
        self.__dict__["_injector"] = None
        self._strategy = prefix_cache.prefix_strategy(model) if self.is_prefix else "input"
        if self._strategy == "encoder":
            self.__dict__["_injector"] = prefix_cache.EncoderPrefixInjector(model)
        model.requires_grad_(False)  # the base stays frozen; only encoders and head copies train
        self.add_adapter(adapter_name, config)

    @property
    def word_embeddings(self) -> Any:
        """The module real tokens are embedded with (reference §8.3)."""
        return self.__dict__["_word_embeddings"]

    # -- building -------------------------------------------------------------------------------------
    def build_encoder(self, config: PromptLearningConfig) -> PromptEncoderBase:
        raise NotImplementedError

    def expected_table_shape(self, config: PromptLearningConfig) -> tuple[int, int]:
        """(rows, width) of `prompt_embeddings` for this config (reference §8.2)."""
        assert config.token_dim is not None and config.num_layers is not None
        if self.is_prefix:
            assert config.num_virtual_tokens is not None
            return config.num_virtual_tokens, config.num_layers * 2 * config.token_dim
        return config.total_virtual_tokens, config.token_dim

    def _check_fits(self, config: PromptLearningConfig, name: str) -> None:
        """A table trained for another base would silently misbehave: compare with the model's own numbers."""
        probe = type(config)(task_type=config.task_type, num_virtual_tokens=config.num_virtual_tokens)
        fill_derived_fields(probe, self.model.config, kv_heads=self.is_prefix)
        fields = ("token_dim", "num_layers", "num_attention_heads") if self.is_prefix else ("token_dim",)
        for field in fields:
            have, want = getattr(config, field), getattr(probe, field)
            if have != want:
                raise AdapterShapeError(
                    f"adapter {name!r}: {field}={have} in the config, but this base model "
                    f"({type(self.model).__name__}) needs {field}={want}: the prompt table would not fit. "
                    "The adapter was trained for another base model; load it on that base, or re-train."
                )

    def add_adapter(self, adapter_name: str, config: AdapterConfig) -> None:
        if not isinstance(config, self.config_cls):
            raise AdapterConfigError(
                f"{type(self).__name__} takes a {self.config_cls.__name__}, got {type(config).__name__}."
            )
        if adapter_name in self.peft_config:
            raise AdapterConfigError(f"an adapter named {adapter_name!r} already exists; pick another name.")
        fill_derived_fields(config, self.model.config, kv_heads=self.is_prefix)
        self._check_fits(config, adapter_name)
        heads = TASK_HEADS.get(TaskType(config.task_type), [])
        missing = [h for h in heads if h not in (config.modules_to_save or [])]
        if missing:
            config.modules_to_save = [*(config.modules_to_save or []), *missing]
        # Trainable even in inference form: PEFT never freezes a prompt encoder, and parameter counts
        # (print_trainable_parameters) must come out as PEFT's. Heads copies do follow inference_mode.
        encoder = self.build_encoder(config)
        device = self.word_embeddings.weight.device
        self.prompt_encoder[adapter_name] = encoder.to(device)
        wrap_modules_to_save(self.model, config.modules_to_save, adapter_name, config.inference_mode)
        self.peft_config[adapter_name] = config
        if self.active_adapter is None:
            self.set_adapter(adapter_name)

    def _wrappers(self) -> list[tuple[str, ModulesToSaveWrapper]]:
        return [(k, m) for k, m in self.model.named_modules() if isinstance(m, ModulesToSaveWrapper)]

    # -- adapter management ----------------------------------------------------------------------------
    def set_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise AdapterConfigError(
                f"no adapter named {adapter_name!r}; loaded: {sorted(self.peft_config)}."
            )
        self.active_adapter = adapter_name
        inference = self.peft_config[adapter_name].inference_mode
        for _, wrapper in self._wrappers():
            wrapper.set_adapter(adapter_name, inference)

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise AdapterConfigError(
                f"no adapter named {adapter_name!r}; loaded: {sorted(self.peft_config)}."
            )
        del self.peft_config[adapter_name]
        del self.prompt_encoder[adapter_name]
        for _, wrapper in self._wrappers():
            wrapper.delete_adapter(adapter_name)
        if self.active_adapter == adapter_name:
            self.active_adapter = None
            if self.peft_config:
                self.set_adapter(next(iter(self.peft_config)))

    def enable_adapters(self, enabled: bool) -> None:
        self._enabled = enabled
        for _, wrapper in self._wrappers():
            wrapper.enable_adapters(enabled)

    def restore_base_model(self) -> nn.Module:
        """Unwrap the head copies and return the transformers model as it was (after a failed load)."""
        for path, wrapper in self._wrappers():
            parent_name, _, child = path.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, child, wrapper.original_module)
        return self.model

    # -- files ------------------------------------------------------------------------------------------
    def prompt_table(self, adapter_name: str) -> torch.Tensor:
        """(rows, width): the adapter's table as used by the forward and saved as `prompt_embeddings`."""
        encoder: Any = self.prompt_encoder[adapter_name]
        return encoder.table()

    def state_dict_to_save(self, adapter_name: str) -> dict[str, torch.Tensor]:
        state = {PROMPT_EMBEDDINGS_KEY: self.prompt_table(adapter_name).detach().cpu()}
        for path, wrapper in self._wrappers():
            if adapter_name in wrapper.modules_to_save:
                for key, value in wrapper.modules_to_save[adapter_name].state_dict().items():
                    state[f"{PROMPT_PREFIX}{path}.{key}"] = value.detach().cpu()
        return state

    def load_state_dict_from_file(self, adapter_name: str, state: dict[str, torch.Tensor]) -> None:
        config = self.peft_config[adapter_name]
        assert isinstance(config, PromptLearningConfig)
        encoder: Any = self.prompt_encoder[adapter_name]
        state = dict(state)
        if PROMPT_EMBEDDINGS_KEY not in state:
            raise AdapterWeightsError(
                f"adapter {adapter_name!r}: the file has no {PROMPT_EMBEDDINGS_KEY!r} tensor; "
                "it is not a prompt-learning adapter."
            )
        table = state.pop(PROMPT_EMBEDDINGS_KEY)
        want = self.expected_table_shape(config)
        if tuple(table.shape) != want:
            raise AdapterShapeError(
                f"adapter {adapter_name!r}: {PROMPT_EMBEDDINGS_KEY} has shape {tuple(table.shape)}, but this base "
                f"model and config need {want} (num_virtual_tokens={config.num_virtual_tokens}, "
                f"token_dim={config.token_dim}, num_layers={config.num_layers}). The table does not fit this base: "
                "load the adapter on the model it was trained for."
            )
        if not encoder.inference_form:
            raise AdapterLoadError(
                f"adapter {adapter_name!r}: a saved prompt table cannot be loaded into a trainable "
                f"{type(encoder).__name__} (the encoder's own weights are not saved). Load it for inference "
                "(inference_mode=True / is_trainable=False)."
            )
        with torch.no_grad():
            encoder.embedding.weight.copy_(table.to(encoder.embedding.weight))
        wrappers = dict(self._wrappers())
        heads: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            path = key.removeprefix(PROMPT_PREFIX)
            owner = next((p for p in wrappers if path.startswith(p + ".")), None)
            if (
                not key.startswith(PROMPT_PREFIX)
                or owner is None
                or adapter_name not in wrappers[owner].modules_to_save
            ):
                raise AdapterWeightsError(
                    f"adapter {adapter_name!r}: unexpected tensor {key!r}; its config's modules_to_save "
                    f"({config.modules_to_save}) does not explain it."
                )
            heads.setdefault(owner, {})[path[len(owner) + 1 :]] = value
        for owner, sub in heads.items():
            module = wrappers[owner].modules_to_save[adapter_name]
            try:
                module.load_state_dict(sub, strict=True)
            except RuntimeError as exc:
                raise AdapterShapeError(
                    f"adapter {adapter_name!r}: head {owner!r} does not fit: {exc}"
                ) from exc

    # -- running ----------------------------------------------------------------------------------------
    def get_prompt(self, batch_size: int) -> Any:
        """PEFT's `get_prompt` for the active adapter.

        Prompt tuning / P-tuning: the prompt table repeated per row, (batch_size, n·submodules, d). Prefix tuning:
        the transformers cache holding each layer's prefix keys and values (what the forward passes to the model).
        """
        if self.active_adapter is None:
            raise AdapterConfigError("no adapter is active; call set_adapter first.")
        config = self.peft_config[self.active_adapter]
        assert isinstance(config, PromptLearningConfig)
        table = self.prompt_table(self.active_adapter)
        if not self.is_prefix:
            return table.repeat(batch_size, 1, 1)
        assert config.num_layers is not None and config.num_attention_heads is not None
        dtype = getattr(self.model, "dtype", None)
        table = table.to(dtype) if dtype is not None else table
        return fwd.build_prefix_cache(
            self._strategy, table, batch_size, config.num_layers, config.num_attention_heads
        )

    def _active(self) -> tuple[PromptLearningConfig, torch.Tensor] | None:
        if not self._enabled or self.active_adapter is None:
            return None
        config = self.peft_config[self.active_adapter]
        assert isinstance(config, PromptLearningConfig)
        table = self.prompt_table(self.active_adapter)
        if self.is_prefix:
            dtype = getattr(self.model, "dtype", None)
            table = table.to(dtype) if dtype is not None else table
        return config, table

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if args:  # transformers models take input_ids first
            kwargs["input_ids"] = args[0]
            if len(args) > 1:
                raise TypeError("pass model inputs other than input_ids by keyword")
        active = self._active()
        if active is None:
            return self.model(**kwargs)
        config, table = active
        task = TaskType(config.task_type)
        n = int(config.num_virtual_tokens or 0)
        if self.is_prefix:
            assert config.num_layers is not None and config.num_attention_heads is not None
            return fwd.prefix_forward(
                self.model,
                self._strategy,
                self.__dict__["_injector"],
                task,
                table,
                n,
                config.num_layers,
                config.num_attention_heads,
                **kwargs,
            )
        return fwd.prompt_forward(self.model, self.word_embeddings, task, table, n, **kwargs)

    def generate(
        self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """Greedy or sampled decoding, consistent with `forward` (see prompt_learning/generation.py)."""
        if input_ids is None:
            input_ids = kwargs.pop("inputs", None)
        if input_ids is None:
            raise ValueError("generate() needs input_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        opts = generation.decode_options(self.model, input_ids.shape[1], kwargs)
        active = self._active()
        is_seq2seq = bool(getattr(self.model.config, "is_encoder_decoder", False))
        if active is None:
            first: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
            if is_seq2seq:
                return generation.decode_seq2seq(self.model, first, None, opts)
            return generation.decode_causal(self.model, input_ids, first, opts)
        config, table = active
        n = int(config.num_virtual_tokens or 0)
        batch = input_ids.shape[0]
        if self.is_prefix:
            assert config.num_layers is not None and config.num_attention_heads is not None
            cache = fwd.build_prefix_cache(
                self._strategy, table, batch, config.num_layers, config.num_attention_heads
            )
            if is_seq2seq:
                return generation.decode_seq2seq(
                    self.model, {"input_ids": input_ids, "attention_mask": attention_mask}, cache, opts
                )
            first = {
                "input_ids": input_ids,
                "attention_mask": fwd.prefix_mask(attention_mask, n),
                "cache": cache,
            }
            return generation.decode_causal(self.model, input_ids, first, opts)
        embeds = self.word_embeddings(input_ids)  # (B, L, d)
        prompts = table[:n].to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)  # (B, n, d)
        first = {
            "inputs_embeds": torch.cat([prompts, embeds], dim=1),
            "attention_mask": fwd.prefix_mask(attention_mask, n),
        }
        if is_seq2seq:
            return generation.decode_seq2seq(self.model, first, None, opts)
        return generation.decode_causal(self.model, input_ids, first, opts)
