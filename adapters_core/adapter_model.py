"""`AdapterModel`: PEFT's `PeftModel` for any registered adapter method.

It owns no method-specific logic. The method's tuner (`get_method(peft_type).tuner_cls`, see
`tuners/protocol.py`) wraps the transformers model; this class resolves files (local or Hub), applies the
task type's config rules, saves in PEFT's layout and forwards everything else. Merging and weighted
combination are optional tuner capabilities: methods without them raise `UnsupportedError`.

The module layout mirrors PEFT (`base_model` is the tuner, `base_model.model` the transformers model), so
parameter names, parameter counts and `print_trainable_parameters` come out exactly as PEFT's. Signatures are
PEFT's too (`PeftModel` is this class, see peft_api.py): PEFT's keywords either do what they do in PEFT
(peft_options.py) or raise naming themselves. Files, model card and `push_to_hub` live in publish.py.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys
from tqdm.auto import tqdm

from . import publish
from .attr_forwarding import ForwardingModule
from .config import AdapterConfig, TaskType
from .errors import AdapterConfigError, AdapterNotFoundError, UnsupportedError
from .peft_names import DEFAULT_ADAPTER_NAME
from .peft_options import LoadOptions, keep_adapter_dtype, set_adapter_trainable
from .prompt_learning.tuner import PromptLearningTuner
from .registry import get_method
from .tuners.protocol import AdapterTuner, MergeableTuner, RestorableTuner, WeightedAdapterTuner
from .weights_io import load_adapter_weights

# Heads PEFT's task wrappers add to `modules_to_save` so they are trained and saved (reference §13.1).
TASK_HEADS: dict[TaskType, list[str]] = {
    TaskType.SEQ_CLS: ["classifier", "score"],
    TaskType.TOKEN_CLS: ["classifier", "score"],
    TaskType.QUESTION_ANS: ["qa_outputs"],
}


def prepare_task_config(config: AdapterConfig) -> AdapterConfig:
    """A copy of `config` with the task type's heads added to `modules_to_save` (when the method has it)."""
    heads = TASK_HEADS.get(config.task_type) if isinstance(config.task_type, TaskType) else None
    if not heads or not hasattr(config, "modules_to_save"):
        return config
    current = list(config.modules_to_save or [])
    merged = current + [h for h in heads if h not in current]
    return dataclasses.replace(config, modules_to_save=merged)  # type: ignore[call-arg]


class AdapterModel(ForwardingModule):
    """A transformers model with one or more named adapters of one method (PEFT's `PeftModel`)."""

    # Missing attributes: the tuner's, and from there the transformers model's
    _forward_to: ClassVar[str] = "base_model"

    TASK_TYPE: ClassVar[TaskType | None] = None

    def __init__(
        self,
        model: nn.Module,
        peft_config: AdapterConfig,
        adapter_name: str = DEFAULT_ADAPTER_NAME,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
    ) -> None:
        """`low_cpu_mem_usage` is accepted for PEFT's signature: adapters are small and allocated directly."""
        super().__init__()
        config = prepare_task_config(peft_config)
        spec = get_method(config.peft_type)
        self.base_model: AdapterTuner = spec.tuner_cls(model, config, adapter_name)
        if not autocast_adapter_dtype:
            keep_adapter_dtype(self.base_model, adapter_name)

    # -- identity -------------------------------------------------------------------------------
    @property
    def peft_config(self) -> dict[str, AdapterConfig]:
        return self.base_model.peft_config

    @property
    def active_adapter(self) -> str | None:
        return self.base_model.active_adapter

    @property
    def active_adapters(self) -> list[str]:
        """PEFT's list form of `active_adapter` (one adapter is active at a time here)."""
        return [] if self.active_adapter is None else [self.active_adapter]

    @property
    def active_peft_config(self) -> AdapterConfig:
        name = self.active_adapter
        if name is None:
            raise AdapterNotFoundError("no adapter is active.")
        return self.peft_config[name]

    def get_base_model(self) -> nn.Module:
        """The transformers model (with the adapter layers injected, for injected methods)."""
        return self.base_model.model

    # -- construction from files ----------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        model_id: str | os.PathLike[str],
        adapter_name: str = DEFAULT_ADAPTER_NAME,
        is_trainable: bool = False,
        config: AdapterConfig | None = None,
        autocast_adapter_dtype: bool = True,
        ephemeral_gpu_offload: bool = False,
        low_cpu_mem_usage: bool = False,
        key_mapping: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> AdapterModel:
        """Load a saved adapter (local directory or Hub id) onto `model` (modified in place, like PEFT).

        PEFT's keywords: `revision`, `subfolder`, `cache_dir`, `token` address the *adapter* files; `torch_device`
        is where the file's tensors are read to; `allow_pickle` is Swapyard's. The task type in the adapter's
        config picks the class (`AdapterModelForCausalLM`, …). On any error the model is left as it was.
        """
        load = LoadOptions.parse("from_pretrained", kwargs, ephemeral_gpu_offload, key_mapping)
        source = str(model_id)
        if config is None:
            config = AdapterConfig.from_pretrained(source, **load.hub)
        if is_trainable and config.is_prompt_learning:
            raise AdapterConfigError(
                "a prompt-learning adapter cannot be loaded as trainable (PEFT forbids it)."
            )
        config = dataclasses.replace(config, inference_mode=not is_trainable)
        target_cls = task_model_class(config.task_type, cls)
        state = load_adapter_weights(source, **load.hub, **load.weights)
        instance = target_cls(model, config, adapter_name, autocast_adapter_dtype)
        try:
            instance.base_model.load_state_dict_from_file(adapter_name, state)
        except Exception:
            if isinstance(instance.base_model, RestorableTuner):
                instance.base_model.restore_base_model()
            raise
        if not is_trainable:
            instance.eval()
        return instance

    def load_adapter(
        self,
        model_id: str | os.PathLike[str],
        adapter_name: str,
        is_trainable: bool = False,
        torch_device: str | None = None,
        autocast_adapter_dtype: bool = True,
        ephemeral_gpu_offload: bool = False,
        low_cpu_mem_usage: bool = False,
        key_mapping: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> _IncompatibleKeys:
        """Add a saved adapter under `adapter_name` without activating it (use `set_adapter`).

        As in PEFT, loading under the name of an adapter already present overwrites its weights. Returns PEFT's
        load result; it is always empty, since a missing or unexpected tensor raises instead.
        """
        if torch_device is not None:
            kwargs["torch_device"] = torch_device
        load = LoadOptions.parse("load_adapter", kwargs, ephemeral_gpu_offload, key_mapping)
        source = str(model_id)
        state = load_adapter_weights(source, **load.hub, **load.weights)
        if adapter_name in self.peft_config:
            self.base_model.load_state_dict_from_file(adapter_name, state)
        else:
            config = AdapterConfig.from_pretrained(source, **load.hub)
            config = prepare_task_config(dataclasses.replace(config, inference_mode=not is_trainable))
            self.base_model.add_adapter(adapter_name, config)
            try:
                if not autocast_adapter_dtype:
                    keep_adapter_dtype(self.base_model, adapter_name)
                self.base_model.load_state_dict_from_file(adapter_name, state)
            except Exception:
                self.base_model.delete_adapter(adapter_name)
                raise
        if not is_trainable:
            self.eval()
        return _IncompatibleKeys(missing_keys=[], unexpected_keys=[])

    # -- saving ---------------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        safe_serialization: bool = True,
        selected_adapters: list[str] | None = None,
        save_embedding_layers: str | bool = "auto",
        is_main_process: bool = True,
        path_initial_model_for_weight_conversion: str | None = None,
        **kwargs: Any,
    ) -> None:
        """PEFT's layout: adapter "default" at the root, every other adapter in a subfolder named after it, and a
        model card (README.md) at the root.

        `safe_serialization=False` writes `adapter_model.bin` (PEFT's `torch.save`); `save_embedding_layers`
        True/False/"auto" saves the base embedding matrices as PEFT does; `is_main_process=False` writes nothing.
        PEFT options that Swapyard cannot honour raise instead of being ignored.
        """
        if path_initial_model_for_weight_conversion is not None:
            raise UnsupportedError(
                "path_initial_model_for_weight_conversion (PiSSA/OLoRA/CorDA conversion) is not implemented; "
                "save without it."
            )
        if kwargs.get("state_dict") is not None:
            raise UnsupportedError(
                "save_pretrained(state_dict=...) is not implemented: the adapter's tensors are read from the "
                "model itself; gather the model first (DeepSpeed/FSDP) and save without state_dict."
            )
        unknown = sorted(k for k in kwargs if k != "state_dict")
        if unknown:
            raise TypeError(f"save_pretrained() got unexpected keyword arguments {unknown}.")
        if save_embedding_layers not in ("auto", True, False):
            raise AdapterConfigError(
                f"save_embedding_layers must be True, False or 'auto', got {save_embedding_layers!r}."
            )
        names = list(self.peft_config) if selected_adapters is None else list(selected_adapters)
        for name in names:
            if name not in self.peft_config:
                raise AdapterNotFoundError(f"no adapter named {name!r}; loaded: {sorted(self.peft_config)}.")
        if os.path.isfile(save_directory):
            raise AdapterConfigError(f"{save_directory} is a file; save_pretrained needs a directory.")
        if not is_main_process:
            return
        publish.write_adapter_files(
            self, str(save_directory), names, safe_serialization, save_embedding_layers
        )

    def create_or_update_model_card(self, output_dir: str) -> None:
        """Write or update `output_dir/README.md`: library `peft`, base model, method (see publish.py)."""
        publish.update_model_card(self, output_dir)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: list[str] | None = None,
    ) -> Any:
        """Upload the adapter (what `save_pretrained` writes), never the base model; see publish.py.

        `max_shard_size` has no effect, as in PEFT: an adapter is always one weights file.
        """
        return publish.push_to_hub(
            self,
            repo_id,
            commit_message=commit_message,
            commit_description=commit_description,
            private=private,
            token=token,
            revision=revision,
            create_pr=create_pr,
            tags=tags,
        )

    # -- adapter management ---------------------------------------------------------------------
    def add_adapter(
        self,
        adapter_name: str,
        peft_config: AdapterConfig,
        low_cpu_mem_usage: bool = False,
        autocast_adapter_dtype: bool = True,
    ) -> None:
        """Add a fresh adapter (PEFT's init); not active until `set_adapter`."""
        self.base_model.add_adapter(adapter_name, prepare_task_config(peft_config))
        if not autocast_adapter_dtype:
            keep_adapter_dtype(self.base_model, adapter_name)

    def set_adapter(self, adapter_name: str, inference_mode: bool = False) -> None:
        """Make `adapter_name` the active adapter; as in PEFT, its tensors become trainable unless
        `inference_mode=True` (prompt encoders and LLaMA-Adapter gates are always trainable, as in PEFT)."""
        if adapter_name not in self.peft_config:
            raise AdapterNotFoundError(
                f"no adapter named {adapter_name!r}; loaded: {sorted(self.peft_config)}."
            )
        self.base_model.set_adapter(adapter_name)
        set_adapter_trainable(self.get_base_model(), adapter_name, inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        self.base_model.delete_adapter(adapter_name)

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the base model (trained `bias="all"/"lora_only"` biases stay, as in PEFT)."""
        self.base_model.enable_adapters(False)
        try:
            yield
        finally:
            self.base_model.enable_adapters(True)

    # -- prompt learning ------------------------------------------------------------------------
    def _prompt_tuner(self, what: str) -> PromptLearningTuner:
        if not isinstance(self.base_model, PromptLearningTuner):
            raise UnsupportedError(
                f"{what} applies to prompt-learning adapters only, not to {self._method_name()} adapters."
            )
        return self.base_model

    def get_prompt(
        self, batch_size: int, task_ids: torch.Tensor | None = None, max_cache_len: int | None = None
    ) -> Any:
        """PEFT's virtual prompts: (batch_size, n, d) embeddings, or prefix tuning's key/value cache."""
        if task_ids is not None or max_cache_len is not None:
            raise UnsupportedError(
                "task_ids (multitask prompt tuning) and max_cache_len (Gemma hybrid caches) are not implemented."
            )
        return self._prompt_tuner("get_prompt").get_prompt(batch_size)

    def get_prompt_embedding_to_save(self, adapter_name: str) -> torch.Tensor:
        """The prompt table saved as `prompt_embeddings`: (n·submodules, d), or prefix tuning's (n, 2·L·d)."""
        return self._prompt_tuner("get_prompt_embedding_to_save").prompt_table(adapter_name).detach().cpu()

    # -- optional capabilities ------------------------------------------------------------------
    def _mergeable(self, what: str) -> MergeableTuner:
        if not isinstance(self.base_model, MergeableTuner):
            raise UnsupportedError(
                f"{what} is not available for {self._method_name()} adapters (nothing to merge)."
            )
        return self.base_model

    def _method_name(self) -> str:
        config = next(iter(self.peft_config.values()), None)
        return str(getattr(config.peft_type, "value", config.peft_type)) if config else "these"

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        self._mergeable("merge_adapter").merge_adapter(adapter_names, safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        self._mergeable("unmerge_adapter").unmerge_adapter()

    def merge_and_unload(
        self, progressbar: bool = False, safe_merge: bool = False, adapter_names: list[str] | None = None
    ) -> nn.Module:
        """Merge and return the plain transformers model (modified in place; use the return value).

        `progressbar=True` shows a tqdm bar over the adapted modules while merging, as PEFT does.
        """
        tuner = self._mergeable("merge_and_unload")
        if not progressbar:
            return tuner.merge_and_unload(safe_merge=safe_merge, adapter_names=adapter_names)
        names = adapter_names if adapter_names is not None else self.active_adapters
        layers = [layer for _, layer in tuner.tuner_layers()]  # type: ignore[attr-defined]
        for layer in tqdm(layers, desc="Unloading and merging model"):
            layer.merge(names, safe_merge=safe_merge)
        return tuner.unload()  # the merged layers' base layers, put back

    def unload(self) -> nn.Module:
        return self._mergeable("unload").unload()

    def add_weighted_adapter(
        self, adapters: list[str], weights: list[float], adapter_name: str, *args: Any, **options: Any
    ) -> None:
        """Combine adapters into a new one (LoRA: PEFT's `combination_type`, `svd_rank`, `svd_clamp`,
        `svd_full_matrices`, `svd_driver`; IA3: linear)."""
        if not isinstance(self.base_model, WeightedAdapterTuner):
            raise UnsupportedError(
                f"add_weighted_adapter is not available for {self._method_name()} adapters."
            )
        self.base_model.add_weighted_adapter(adapters, weights, adapter_name, *args, **options)

    # -- parameters -----------------------------------------------------------------------------
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) over `named_parameters()`, as PEFT counts them."""
        trainable = total = 0
        for _, param in self.named_parameters():
            total += param.numel()
            if param.requires_grad:
                trainable += param.numel()
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / total:.4f}"
        )

    # -- running --------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model.generate(*args, **kwargs)


class AdapterModelForCausalLM(AdapterModel):
    TASK_TYPE = TaskType.CAUSAL_LM


class AdapterModelForSeq2SeqLM(AdapterModel):
    TASK_TYPE = TaskType.SEQ_2_SEQ_LM


class AdapterModelForSequenceClassification(AdapterModel):
    TASK_TYPE = TaskType.SEQ_CLS


class AdapterModelForTokenClassification(AdapterModel):
    TASK_TYPE = TaskType.TOKEN_CLS


class AdapterModelForQuestionAnswering(AdapterModel):
    TASK_TYPE = TaskType.QUESTION_ANS


class AdapterModelForFeatureExtraction(AdapterModel):
    TASK_TYPE = TaskType.FEATURE_EXTRACTION


TASK_MODEL_CLASSES: dict[TaskType, type[AdapterModel]] = {
    c.TASK_TYPE: c
    for c in (
        AdapterModelForCausalLM,
        AdapterModelForSeq2SeqLM,
        AdapterModelForSequenceClassification,
        AdapterModelForTokenClassification,
        AdapterModelForQuestionAnswering,
        AdapterModelForFeatureExtraction,
    )
}


def task_model_class(task_type: object, default: type[AdapterModel]) -> type[AdapterModel]:
    """The `AdapterModel` subclass of a task type (PEFT: the task type wins over the calling class)."""
    return TASK_MODEL_CLASSES.get(task_type, default) if isinstance(task_type, TaskType) else default


def get_adapter_model(
    model: nn.Module,
    peft_config: AdapterConfig,
    adapter_name: str = DEFAULT_ADAPTER_NAME,
    mixed: bool = False,
    autocast_adapter_dtype: bool = True,
    revision: str | None = None,
    low_cpu_mem_usage: bool = False,
) -> AdapterModel:
    """Wrap `model` (in place) with a fresh adapter; the task type picks the class (PEFT's `get_peft_model`).

    `mixed=True` (PEFT's mixed-type model) is what `MultiAdapterModel` does; it is refused here.
    """
    if mixed:
        raise UnsupportedError(
            "mixed=True (adapters of different types in one model) is MultiAdapterModel's job: build "
            "MultiAdapterModel(model) and add the adapters to it."
        )
    changes: dict[str, Any] = {"base_model_name_or_path": publish.name_or_path(model)}
    if revision is not None:
        changes["revision"] = revision
    config = dataclasses.replace(peft_config, **changes)
    cls = task_model_class(config.task_type, AdapterModel)
    return cls(model, config, adapter_name, autocast_adapter_dtype)
