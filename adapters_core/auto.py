"""`AutoAdapterModel*`: load the base model named in an adapter's config, then the adapter (reference §13.4).

`AutoAdapterModelForCausalLM.from_pretrained("owner/adapter")` reads `base_model_name_or_path` and the base
`revision` from `adapter_config.json`, loads that base with the matching transformers Auto class, grows its
embeddings if the adapter ships a larger tokenizer, and returns the `AdapterModel`. Plain `AutoAdapterModel`
serves adapters without a task type, through the config's `auto_mapping` (transformers classes only).
"""

from __future__ import annotations

import importlib
import os
from typing import Any, ClassVar

from .adapter_model import (
    AdapterModel,
    AdapterModelForCausalLM,
    AdapterModelForFeatureExtraction,
    AdapterModelForQuestionAnswering,
    AdapterModelForSeq2SeqLM,
    AdapterModelForSequenceClassification,
    AdapterModelForTokenClassification,
)
from .config import AdapterConfig, TaskType
from .errors import AdapterConfigError
from .hub import resolve_file
from .peft_names import DEFAULT_ADAPTER_NAME

TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
# auto_mapping may only name classes from these packages (PEFT's allowlist idea, narrowed to transformers).
IMPORT_ALLOWLIST = ("transformers",)


class _AutoAdapterModel:
    transformers_auto: ClassVar[str | None] = None  # name of the transformers Auto class
    adapter_cls: ClassVar[type[AdapterModel]] = AdapterModel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"use {type(self).__name__}.from_pretrained(path_or_hub_id).")

    @classmethod
    def _base_class(cls, config: AdapterConfig, source: str) -> Any:
        task = config.task_type
        if cls.transformers_auto is None:
            if task is not None:
                raise AdapterConfigError(
                    f"{source}: AutoAdapterModel serves adapters without a task type, but this one has "
                    f"task_type={getattr(task, 'value', task)!r}; use the matching AutoAdapterModelFor… class."
                )
            mapping = config.auto_mapping or {}
            library = str(mapping.get("parent_library", ""))
            if not mapping or library.split(".")[0] not in IMPORT_ALLOWLIST:
                raise AdapterConfigError(
                    f"{source}: cannot infer the base model class (auto_mapping={mapping!r}); load the base model "
                    "yourself and call AdapterModel.from_pretrained(model, ...)."
                )
            return getattr(importlib.import_module(library), mapping["base_model_class"])
        expected = AUTO_FOR_TASK.get(task) if isinstance(task, TaskType) else None
        if task is not None and expected is not cls:
            raise AdapterConfigError(
                f"{source}: the adapter's task_type is {getattr(task, 'value', task)!r}, which "
                f"{cls.__name__} does not serve; use {expected.__name__ if expected else 'AutoAdapterModel'}."
            )
        import transformers

        return getattr(transformers, cls.transformers_auto)

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike[str],
        adapter_name: str = DEFAULT_ADAPTER_NAME,
        is_trainable: bool = False,
        *,
        revision: str | None = None,
        subfolder: str | None = None,
        cache_dir: str | None = None,
        token: str | bool | None = None,
        allow_pickle: bool = True,
        **model_kwargs: Any,
    ) -> AdapterModel:
        """Base model from the adapter's `base_model_name_or_path` (at its `revision`), then the adapter.

        `revision`/`subfolder` address the adapter; `model_kwargs` go to the base model's `from_pretrained`.
        """
        source = str(path_or_hub_id)
        hub: dict[str, Any] = {
            "subfolder": subfolder,
            "revision": revision,
            "cache_dir": cache_dir,
            "token": token,
        }
        config = AdapterConfig.from_pretrained(source, **hub)
        if not config.base_model_name_or_path:
            raise AdapterConfigError(
                f"{source}: adapter_config.json has no base_model_name_or_path; load the base model yourself and "
                "call AdapterModel.from_pretrained(model, ...)."
            )
        base_cls = cls._base_class(config, source)
        kwargs = {"cache_dir": cache_dir, "token": token, **model_kwargs}
        base = base_cls.from_pretrained(config.base_model_name_or_path, revision=config.revision, **kwargs)
        _grow_embeddings_for_tokenizer(base, source, hub)
        return cls.adapter_cls.from_pretrained(
            base, source, adapter_name, is_trainable, config, allow_pickle=allow_pickle, **hub
        )


def _grow_embeddings_for_tokenizer(base: Any, source: str, hub: dict[str, Any]) -> None:
    """If the adapter ships a tokenizer with more tokens than the base has embeddings, resize (as PEFT)."""
    if (
        not hasattr(base, "get_input_embeddings")
        or resolve_file(source, TOKENIZER_CONFIG_NAME, missing_ok=True, **hub) is None
    ):
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        source,
        subfolder=hub["subfolder"] or "",
        revision=hub["revision"],
        cache_dir=hub["cache_dir"],
        token=hub["token"],
    )
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer))


class AutoAdapterModel(_AutoAdapterModel):
    transformers_auto = None
    adapter_cls = AdapterModel


class AutoAdapterModelForCausalLM(_AutoAdapterModel):
    transformers_auto = "AutoModelForCausalLM"
    adapter_cls = AdapterModelForCausalLM


class AutoAdapterModelForSeq2SeqLM(_AutoAdapterModel):
    transformers_auto = "AutoModelForSeq2SeqLM"
    adapter_cls = AdapterModelForSeq2SeqLM


class AutoAdapterModelForSequenceClassification(_AutoAdapterModel):
    transformers_auto = "AutoModelForSequenceClassification"
    adapter_cls = AdapterModelForSequenceClassification


class AutoAdapterModelForTokenClassification(_AutoAdapterModel):
    transformers_auto = "AutoModelForTokenClassification"
    adapter_cls = AdapterModelForTokenClassification


class AutoAdapterModelForQuestionAnswering(_AutoAdapterModel):
    transformers_auto = "AutoModelForQuestionAnswering"
    adapter_cls = AdapterModelForQuestionAnswering


class AutoAdapterModelForFeatureExtraction(_AutoAdapterModel):
    transformers_auto = "AutoModel"
    adapter_cls = AdapterModelForFeatureExtraction


AUTO_FOR_TASK: dict[TaskType, type[_AutoAdapterModel]] = {
    TaskType.CAUSAL_LM: AutoAdapterModelForCausalLM,
    TaskType.SEQ_2_SEQ_LM: AutoAdapterModelForSeq2SeqLM,
    TaskType.SEQ_CLS: AutoAdapterModelForSequenceClassification,
    TaskType.TOKEN_CLS: AutoAdapterModelForTokenClassification,
    TaskType.QUESTION_ANS: AutoAdapterModelForQuestionAnswering,
    TaskType.FEATURE_EXTRACTION: AutoAdapterModelForFeatureExtraction,
}
