"""`AdapterModel`: PEFT's `PeftModel` for any registered adapter method.

It owns no method-specific logic. The method's tuner (`get_method(peft_type).tuner_cls`, see
`tuners/protocol.py`) wraps the transformers model; this class resolves files (local or Hub), applies the
task type's config rules, saves in PEFT's layout and forwards everything else. Merging and weighted
combination are optional tuner capabilities: methods without them raise `UnsupportedError`.

The module layout mirrors PEFT (`base_model` is the tuner, `base_model.model` the transformers model), so
parameter names, parameter counts and `print_trainable_parameters` come out exactly as PEFT's.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from torch import nn

from .config import AdapterConfig, TaskType
from .errors import AdapterConfigError, AdapterNotFoundError, UnsupportedError
from .peft_names import DEFAULT_ADAPTER_NAME
from .registry import get_method
from .tuners.protocol import AdapterTuner, MergeableTuner, RestorableTuner, WeightedAdapterTuner
from .weights_io import load_adapter_weights, save_adapter_weights

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


class AdapterModel(nn.Module):
    """A transformers model with one or more named adapters of one method (PEFT's `PeftModel`)."""

    TASK_TYPE: ClassVar[TaskType | None] = None

    def __init__(
        self, model: nn.Module, config: AdapterConfig, adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> None:
        super().__init__()
        config = prepare_task_config(config)
        spec = get_method(config.peft_type)  # type: ignore[arg-type]
        self.base_model: AdapterTuner = spec.tuner_cls(model, config, adapter_name)

    def __getattr__(self, name: str) -> Any:
        """Forward missing attributes to the tuner, and from there to the transformers model (like PEFT)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    # -- identity -------------------------------------------------------------------------------
    @property
    def peft_config(self) -> dict[str, AdapterConfig]:
        return self.base_model.peft_config

    @property
    def active_adapter(self) -> str | None:
        return self.base_model.active_adapter

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
        path_or_hub_id: str | os.PathLike[str],
        adapter_name: str = DEFAULT_ADAPTER_NAME,
        is_trainable: bool = False,
        config: AdapterConfig | None = None,
        *,
        revision: str | None = None,
        subfolder: str | None = None,
        cache_dir: str | None = None,
        token: str | bool | None = None,
        allow_pickle: bool = True,
    ) -> AdapterModel:
        """Load a saved adapter (local directory or Hub id) onto `model` (modified in place, like PEFT).

        `revision` and `subfolder` address the *adapter* repo. The task type in the adapter's config picks the
        class (`AdapterModelForCausalLM`, …). On any error the model is left as it was.
        """
        source = str(path_or_hub_id)
        hub: dict[str, Any] = {
            "subfolder": subfolder,
            "revision": revision,
            "cache_dir": cache_dir,
            "token": token,
        }
        if config is None:
            config = AdapterConfig.from_pretrained(source, **hub)
        if is_trainable and config.is_prompt_learning:
            raise AdapterConfigError(
                "a prompt-learning adapter cannot be loaded as trainable (PEFT forbids it)."
            )
        config = dataclasses.replace(config, inference_mode=not is_trainable)
        target_cls = task_model_class(config.task_type, cls)
        state = load_adapter_weights(source, allow_pickle=allow_pickle, **hub)
        instance = target_cls(model, config, adapter_name)
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
        path_or_hub_id: str | os.PathLike[str],
        adapter_name: str,
        is_trainable: bool = False,
        *,
        revision: str | None = None,
        subfolder: str | None = None,
        cache_dir: str | None = None,
        token: str | bool | None = None,
        allow_pickle: bool = True,
    ) -> None:
        """Add a saved adapter under `adapter_name` without activating it (use `set_adapter`)."""
        if adapter_name in self.peft_config:
            raise AdapterConfigError(f"an adapter named {adapter_name!r} already exists; pick another name.")
        source = str(path_or_hub_id)
        hub: dict[str, Any] = {
            "subfolder": subfolder,
            "revision": revision,
            "cache_dir": cache_dir,
            "token": token,
        }
        config = AdapterConfig.from_pretrained(source, **hub)
        config = prepare_task_config(dataclasses.replace(config, inference_mode=not is_trainable))
        state = load_adapter_weights(source, allow_pickle=allow_pickle, **hub)
        self.base_model.add_adapter(adapter_name, config)
        try:
            self.base_model.load_state_dict_from_file(adapter_name, state)
        except Exception:
            self.base_model.delete_adapter(adapter_name)
            raise
        if not is_trainable:
            self.eval()

    # -- saving ---------------------------------------------------------------------------------
    def save_pretrained(
        self, save_directory: str | os.PathLike[str], selected_adapters: list[str] | None = None
    ) -> None:
        """PEFT's layout: adapter "default" at the root, every other adapter in a subfolder named after it."""
        names = list(self.peft_config) if selected_adapters is None else list(selected_adapters)
        for name in names:
            if name not in self.peft_config:
                raise AdapterNotFoundError(f"no adapter named {name!r}; loaded: {sorted(self.peft_config)}.")
        os.makedirs(save_directory, exist_ok=True)
        for name in names:
            out_dir = (
                str(save_directory) if name == DEFAULT_ADAPTER_NAME else os.path.join(save_directory, name)
            )
            save_adapter_weights(self.base_model.state_dict_to_save(name), out_dir)
            config = self.peft_config[name]
            changes: dict[str, Any] = {"inference_mode": True}
            if config.base_model_name_or_path is None:
                changes["base_model_name_or_path"] = _name_or_path(self.get_base_model())
            if config.task_type is None:
                base_cls = type(self.get_base_model())
                changes["auto_mapping"] = {
                    "base_model_class": base_cls.__name__,
                    "parent_library": base_cls.__module__,
                }
            dataclasses.replace(config, **changes).save_pretrained(out_dir)

    # -- adapter management ---------------------------------------------------------------------
    def add_adapter(self, adapter_name: str, config: AdapterConfig) -> None:
        """Add a fresh adapter (PEFT's init); not active until `set_adapter`."""
        self.base_model.add_adapter(adapter_name, prepare_task_config(config))

    def set_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise AdapterNotFoundError(
                f"no adapter named {adapter_name!r}; loaded: {sorted(self.peft_config)}."
            )
        self.base_model.set_adapter(adapter_name)

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

    def merge_and_unload(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> nn.Module:
        """Merge and return the plain transformers model (modified in place; use the return value)."""
        return self._mergeable("merge_and_unload").merge_and_unload(
            safe_merge=safe_merge, adapter_names=adapter_names
        )

    def unload(self) -> nn.Module:
        return self._mergeable("unload").unload()

    def add_weighted_adapter(
        self, adapters: list[str], weights: list[float], adapter_name: str, **options: Any
    ) -> None:
        """Combine adapters into a new one (LoRA: `combination_type="svd"|"linear"|"cat"`, `svd_rank`)."""
        if not isinstance(self.base_model, WeightedAdapterTuner):
            raise UnsupportedError(
                f"add_weighted_adapter is not available for {self._method_name()} adapters."
            )
        self.base_model.add_weighted_adapter(adapters, weights, adapter_name, **options)

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


def _name_or_path(model: nn.Module) -> str | None:
    """PEFT records `model.name_or_path`; models built from a config have "" (saved as null)."""
    return model.__dict__.get("name_or_path", None) or getattr(model, "name_or_path", None) or None


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
    c.TASK_TYPE: c  # type: ignore[misc]
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
    config: AdapterConfig,
    adapter_name: str = DEFAULT_ADAPTER_NAME,
    revision: str | None = None,
) -> AdapterModel:
    """Wrap `model` (in place) with a fresh adapter; the task type picks the class (PEFT's `get_peft_model`)."""
    changes: dict[str, Any] = {"base_model_name_or_path": _name_or_path(model)}
    if revision is not None:
        changes["revision"] = revision
    config = dataclasses.replace(config, **changes)
    cls = task_model_class(config.task_type, AdapterModel)
    return cls(model, config, adapter_name)
