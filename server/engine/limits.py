"""Token limits in force: the operator's (--max-input-tokens, --max-total-tokens, --max-new-tokens-limit),
clamped at start-up to the positions the base model can attend over, and checked per request.

A row occupies more positions than its prompt when its adapter adds some: prompt tuning and P-tuning put
`num_virtual_tokens` embeddings before the prompt, prefix tuning puts its prefix (`num_virtual_tokens` keys and
values) in front of every layer's cache and shifts the real positions by it (adapters_core/multi/prompts.py).
Those count as input tokens against every limit. LLaMA-Adapter's `adapter_len` prompt takes no position: its
keys are attended by a separate gated attention, without RoPE, and are shared by all rows.

Worked example (a causal base with 256 positions, defaults 1,024 input / 2,048 total / 512 new):
limits become 255 input / 256 total / 255 new; a prompt-tuning adapter with 20 virtual tokens and a
200-token prompt asking for 40 new tokens needs 260 positions: 422 naming the 256-token limit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import InvalidInputError
from ..settings import Settings

log = logging.getLogger("swapyard.engine")
CONFIG_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
NO_LIMIT = 10**9  # transformers' tokenizers say 1e30 (VERY_LARGE_INTEGER) when they know no length
FLAGS = {
    "max_input_tokens": "--max-input-tokens",
    "max_total_tokens": "--max-total-tokens",
    "max_new_tokens": "--max-new-tokens-limit",
}


def context_length(config: Any, tokenizer: Any = None) -> int | None:
    """Positions the base model can attend over: from its config, else its tokenizer's model_max_length;
    None when neither says (e.g. T5's relative positions with a tokenizer that gives no length)."""
    for key in CONFIG_CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < NO_LIMIT:
        return value
    return None


def prompt_positions(model: Any, model_name: str | None) -> int:
    """Positions a resident adapter adds before each row's prompt (module docstring); 0 for the base model.
    `model_name` is a lease's `model_name`: the adapter is resident while the lease is held."""
    if model_name is None:
        return 0
    loaded = model.adapters.get(model_name)
    prompt = loaded.parsed.prompt if loaded is not None else None
    if prompt is None or prompt.kind not in ("virtual", "prefix"):
        return 0
    return int(prompt.length)


@dataclass(frozen=True)
class TokenLimits:
    """The limits one request is checked against (`check`); `clamped` names those lowered to `context`."""

    max_input_tokens: int
    max_total_tokens: int
    max_new_tokens: int
    default_new_tokens: int
    context: int | None = None
    clamped: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_settings(cls, settings: Settings, context: int | None, kind: str) -> TokenLimits:
        """The settings' limits, clamped to `context` (logged). A causal LM's prompt and output share the
        context; a seq2seq model's input and output each have their own; a classifier only reads input."""
        limits = cls(
            max_input_tokens=settings.max_input_tokens,
            max_total_tokens=settings.max_total_tokens,
            max_new_tokens=settings.max_new_tokens_limit,
            default_new_tokens=settings.default_max_new_tokens,
            context=context,
        )
        if context is None:
            return limits
        wanted = {"max_input_tokens": min(limits.max_input_tokens, context)}
        if kind == "causal-lm":
            total = min(limits.max_total_tokens, context)
            wanted = {
                "max_total_tokens": total,
                "max_input_tokens": min(limits.max_input_tokens, total - 1),
                "max_new_tokens": min(limits.max_new_tokens, total - 1),
            }
        elif kind == "seq2seq-lm":
            wanted["max_new_tokens"] = min(limits.max_new_tokens, context)
        lowered = {k: v for k, v in wanted.items() if v < getattr(limits, k)}
        if not lowered:
            return limits
        log.warning(
            "the base model attends over %d positions: %s",
            context,
            ", ".join(f"{FLAGS[k]} {getattr(limits, k)} -> {v}" for k, v in lowered.items()),
        )
        new_limit = lowered.get("max_new_tokens", limits.max_new_tokens)
        return replace(
            limits,
            **lowered,
            default_new_tokens=min(limits.default_new_tokens, new_limit),
            clamped=frozenset(lowered),
        )

    def _name(self, key: str) -> str:
        flag = FLAGS[key]
        if key in self.clamped:
            return f"{flag}, lowered to fit the base model's context of {self.context} positions"
        return flag

    def check_input(self, input_tokens: int, virtual_tokens: int = 0, name: str = "inputs") -> None:
        """422 when a prompt (plus the positions its adapter adds) is over the input limit."""
        prompt = input_tokens + virtual_tokens
        if prompt > self.max_input_tokens:
            raise InvalidInputError(
                f"{name} have {_count(input_tokens, virtual_tokens)}, more than the limit of "
                f"{self.max_input_tokens} ({self._name('max_input_tokens')})"
            )

    def check_inputs(self, lengths: list[int], virtual_tokens: int = 0) -> None:
        """`check_input` for each of a request's texts (classification), naming the one over the limit."""
        for i, length in enumerate(lengths):
            self.check_input(length, virtual_tokens, name=f"input {i}" if len(lengths) > 1 else "inputs")

    def check(self, input_tokens: int, new_tokens: int, virtual_tokens: int = 0) -> None:
        """422 naming the limit a generation crosses. `virtual_tokens`: positions its adapter adds."""
        self.check_input(input_tokens, virtual_tokens)
        if new_tokens > self.max_new_tokens:
            raise InvalidInputError(
                f"max_new_tokens {new_tokens} is over the limit of {self.max_new_tokens} "
                f"({self._name('max_new_tokens')})"
            )
        if input_tokens + virtual_tokens + new_tokens > self.max_total_tokens:
            raise InvalidInputError(
                f"inputs ({_count(input_tokens, virtual_tokens)}) + max_new_tokens ({new_tokens}) exceed the "
                f"limit of {self.max_total_tokens} total tokens ({self._name('max_total_tokens')})"
            )


def _count(input_tokens: int, virtual_tokens: int) -> str:
    if not virtual_tokens:
        return f"{input_tokens} tokens"
    return f"{input_tokens} tokens + {virtual_tokens} virtual tokens of the adapter = {input_tokens + virtual_tokens}"
