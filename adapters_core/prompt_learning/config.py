"""The config fields shared by prompt tuning, P-tuning and prefix tuning (PEFT's `PromptLearningConfig`).

Derived fields (`num_layers`, `token_dim`, `num_attention_heads`, `num_transformer_submodules`) are filled
from the base model's config when a tuner is built, exactly as PEFT's `_prepare_prompt_learning_config`
does (reference §8.1), and saved with the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..config import AdapterConfig, TaskType
from ..errors import AdapterConfigError


@dataclass
class PromptLearningConfig(AdapterConfig):
    """Virtual-token adapters: `num_virtual_tokens` rows prepended to the input (or to every layer's KV)."""

    REQUIRED_KEYS: ClassVar[tuple[str, ...]] = ("peft_type", "num_virtual_tokens")
    PROMPT_LEARNING: ClassVar[bool] = True

    num_virtual_tokens: int | None = None
    token_dim: int | None = None
    num_transformer_submodules: int | None = None
    num_attention_heads: int | None = None
    num_layers: int | None = None
    modules_to_save: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.num_virtual_tokens
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise AdapterConfigError(
                f"num_virtual_tokens must be a positive integer, got {n!r}; set e.g. num_virtual_tokens=20."
            )
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save)

    @property
    def total_virtual_tokens(self) -> int:
        """Rows of the prompt table: `n · num_transformer_submodules` (2n for seq2seq, reference §8.1)."""
        assert self.num_virtual_tokens is not None and self.num_transformer_submodules is not None
        return self.num_virtual_tokens * self.num_transformer_submodules


def _first_attr(cfg: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        value = getattr(cfg, name, None)
        if value is not None:
            return value
    return None


def fill_derived_fields(config: PromptLearningConfig, model_config: Any, *, kv_heads: bool) -> None:
    """Fill the fields PEFT derives from the model config, keeping any value already set (reference §8.1).

    `kv_heads` selects the GQA rule of prefix tuning: when the model has `num_key_value_heads`, the prefix
    holds key/value heads, so `token_dim = head_dim · num_key_value_heads` and `num_attention_heads =
    num_key_value_heads`.
    """
    if config.task_type is None:
        raise AdapterConfigError(
            f"{type(config).__name__} needs a task_type (one of {[t.value for t in TaskType]}): prompt-learning "
            "methods place the virtual tokens per task. Set e.g. task_type='CAUSAL_LM'."
        )
    if config.num_virtual_tokens is None:
        raise AdapterConfigError(f"{type(config).__name__}: set num_virtual_tokens (e.g. 20).")
    cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    if config.num_layers is None:
        config.num_layers = _first_attr(cfg, ("num_hidden_layers", "num_layers", "n_layer"))
    if config.token_dim is None:
        config.token_dim = _first_attr(cfg, ("hidden_size", "n_embd", "d_model"))
    if config.num_attention_heads is None:
        config.num_attention_heads = _first_attr(
            cfg, ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads")
        )
    kv = getattr(cfg, "num_key_value_heads", None)
    if kv_heads and kv is not None:
        # PEFT overwrites here (it does not keep a value from the file): the same numbers for any saved GQA prefix.
        head_dim = getattr(cfg, "head_dim", None) or config.token_dim // config.num_attention_heads
        config.token_dim = head_dim * kv
        config.num_attention_heads = kv
    if config.num_transformer_submodules is None:
        config.num_transformer_submodules = 2 if config.task_type == TaskType.SEQ_2_SEQ_LM else 1
    if getattr(config, "encoder_hidden_size", "absent") is None:
        config.encoder_hidden_size = config.token_dim  # type: ignore[attr-defined]
