"""Greedy and sampled decoding that is consistent with the adapter's forward pass (reference §14).

PEFT 0.21 with transformers 5 drops the prefix, or re-inserts the virtual tokens at every step, when a causal LM
generates. Swapyard decodes with its own short loop over the base model and a KV cache instead:

* the adapter enters once, at prefill (virtual tokens in the first `inputs_embeds`, or the prefix as the initial
  cache), and every later step feeds one real token;
* positions are the model's defaults (the cache length), so step `t` sees exactly what a full forward over
  `input_ids + t` new tokens sees: greedy decoding equals repeated full forwards;
* the returned sequences are `input_ids` + new tokens (causal) or `decoder_start` + new tokens (seq2seq), never
  the virtual tokens.

Stopping and padding follow transformers: a row that emits an EOS id is finished and gets `pad_token_id`
afterwards; decoding stops when every row is finished or after `max_new_tokens`. Choosing a token is
adapters_core/sampling.py (the one sampler, shared with the server): the repetition penalty, then temperature,
top-k and top-p with transformers' semantics, in float64, then a draw from the softmax with `torch.multinomial`
(pass `generator=` for reproducible draws). Every other transformers option
(beam search, `num_return_sequences`, `logits_processor`, ...) set to a non-default value, as an argument or in
`generation_config`, raises `UnsupportedError` naming it: it is never silently ignored.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, EncoderDecoderCache, GenerationConfig

from ..errors import UnsupportedError
from ..sampling import draw, penalize, seen_mask, warp


@dataclass
class DecodeOptions:
    """Resolved generation settings (`decode_options`); the warpers apply only when `do_sample`."""

    max_new_tokens: int
    do_sample: bool
    eos_token_ids: list[int]
    pad_token_id: int | None
    generator: torch.Generator | None
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None


_KNOWN = {
    "max_new_tokens",
    "max_length",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "eos_token_id",
    "pad_token_id",
    "generator",
    "use_cache",
    "generation_config",
    "num_beams",
}
# generation_config entries that change nothing here: the start ids (read by the model or by decode_seq2seq),
# the cache kind (this loop always uses a dynamic cache) and version stamps.
_INERT = {
    "bos_token_id",
    "decoder_start_token_id",
    "use_cache",
    "cache_implementation",
    "_from_model_config",
    "transformers_version",
}
# transformers 5 stores None for unset options; these values mean the same (they change nothing).
_NEUTRAL: dict[str, Any] = {
    "num_return_sequences": 1,
    "num_beam_groups": 1,
    "length_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "min_length": 0,
    "min_new_tokens": 0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "diversity_penalty": 0.0,
    "encoder_repetition_penalty": 1.0,
    "guidance_scale": 1.0,
}
# transformers' `generate` arguments that are not GenerationConfig fields.
_GENERATE_ARGS = {
    "logits_processor",
    "stopping_criteria",
    "prefix_allowed_tokens_fn",
    "synced_gpus",
    "assistant_model",
    "streamer",
    "negative_prompt_ids",
    "negative_prompt_attention_mask",
    "custom_generate",
    "use_model_defaults",
    "tokenizer",
    "assistant_tokenizer",
}


def _unsupported(names: list[str], where: str) -> UnsupportedError:
    return UnsupportedError(
        f"generate() with a prompt-learning or LLaMA-Adapter adapter does not support {names} ({where}); Swapyard "
        f"decodes greedily or by sampling with {sorted(_KNOWN - {'generation_config', 'use_cache'})}. Drop those "
        "options (for beam search: num_beams=1)."
    )


def _neutral(name: str, value: Any, defaults: dict[str, Any]) -> bool:
    return value is None or value is False or value == defaults.get(name) or value == _NEUTRAL.get(name)


def check_supported(kwargs: dict[str, Any], cfg: Any) -> None:
    """Refuse, by name, every transformers generation option this loop would otherwise ignore."""
    defaults = GenerationConfig().to_dict()
    fields = set(defaults)
    unknown = sorted(set(kwargs) - _KNOWN - fields - _GENERATE_ARGS)
    if unknown:
        raise TypeError(f"generate() got unexpected arguments {unknown}; supported: {sorted(_KNOWN)}.")
    passed = sorted(k for k in set(kwargs) - _KNOWN if not _neutral(k, kwargs[k], defaults))
    if passed:
        raise _unsupported(passed, "arguments")
    if cfg is not None:
        changed = sorted(
            k
            for k, v in cfg.to_dict().items()
            if k in fields and k not in _KNOWN | _INERT and not _neutral(k, v, defaults)
        )
        if changed:
            raise _unsupported(changed, "set in generation_config")


def decode_options(model: Any, input_length: int, kwargs: dict[str, Any]) -> DecodeOptions:
    """Resolve generation settings: explicit kwargs, else `generation_config` (the model's by default)."""
    cfg = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    check_supported(kwargs, cfg)

    def opt(name: str, default: Any = None) -> Any:
        if kwargs.get(name) is not None:
            return kwargs[name]
        value = getattr(cfg, name, None) if cfg is not None else None
        return default if value is None else value

    if opt("num_beams", 1) != 1:
        raise _unsupported([f"num_beams={opt('num_beams')}"], "beam search")
    max_new = opt("max_new_tokens")
    if max_new is None:
        max_new = max(opt("max_length", 20) - input_length, 0)
    eos = opt("eos_token_id")
    eos_ids = [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
    do_sample = bool(opt("do_sample", False))
    penalty = float(opt("repetition_penalty", 1.0))
    temperature, top_k, top_p = float(opt("temperature", 1.0)), int(opt("top_k", 0)), float(opt("top_p", 1.0))
    # transformers' processors refuse these values too (ValueError)
    if not (math.isfinite(penalty) and penalty > 0):
        raise ValueError(f"repetition_penalty has to be a strictly positive float, but is {penalty}")
    if do_sample and not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature has to be a strictly positive float, but is {temperature}")
    if do_sample and not (0 <= top_p <= 1):
        raise ValueError(f"top_p has to be a float >= 0 and <= 1, but is {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k has to be a non-negative integer (0 turns it off), but is {top_k}")
    pad = opt("pad_token_id")
    if pad is None and eos_ids:
        pad = eos_ids[0]
    return DecodeOptions(
        int(max_new),
        do_sample,
        eos_ids,
        pad,
        kwargs.get("generator"),
        penalty,
        temperature,
        top_k or None,
        top_p,
    )


def next_tokens(ids: torch.Tensor, logits: torch.Tensor, opts: DecodeOptions) -> torch.Tensor:
    """(B, V) logits of the last position -> (B,) chosen ids; `ids` (B, T) so far (for the penalty)."""
    scores = logits.double()
    if opts.repetition_penalty != 1.0:
        scores = penalize(scores, seen_mask(ids, scores.shape[-1]), opts.repetition_penalty)
    if not opts.do_sample:
        return scores.argmax(dim=-1)
    return draw(warp(scores, opts.temperature, opts.top_k, opts.top_p), opts.generator)


Step = Callable[[torch.Tensor], torch.Tensor]  # next tokens (B, 1) -> logits of the last position (B, V)


def decode_loop(ids: torch.Tensor, logits: torch.Tensor, step: Step, opts: DecodeOptions) -> torch.Tensor:
    """Append up to `max_new_tokens` ids to `ids` (B, T0); `step(tokens (B,1)) -> logits (B, V)`."""
    unfinished = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    eos = torch.tensor(opts.eos_token_ids, device=ids.device, dtype=ids.dtype)
    for t in range(opts.max_new_tokens):
        tokens = next_tokens(ids, logits, opts)
        if opts.pad_token_id is not None:
            tokens = torch.where(unfinished, tokens, torch.full_like(tokens, opts.pad_token_id))
        ids = torch.cat([ids, tokens[:, None]], dim=1)
        if eos.numel():
            unfinished &= ~torch.isin(tokens, eos)
        if not bool(unfinished.any()) or t + 1 == opts.max_new_tokens:
            break
        logits = step(tokens[:, None])
    return ids


@torch.no_grad()
def decode_causal(
    model: Any, input_ids: torch.Tensor, first_inputs: dict[str, Any], opts: DecodeOptions
) -> torch.Tensor:
    """Decode a decoder-only model. `first_inputs`: the prefill call's kwargs (`input_ids` or `inputs_embeds`,
    the full `attention_mask` including any virtual positions, optionally a prefix `cache`).
    Returns (B, L + new) = `input_ids` + new tokens."""
    first = dict(first_inputs)
    cache = first.pop("cache", None)
    if cache is None:
        cache = DynamicCache(config=model.config)
    mask = first.pop("attention_mask")  # (B, n + L) or (B, L)
    out = model(**first, attention_mask=mask, cache=cache, use_cache=True)
    state = {"mask": mask, "cache": out.cache}

    def step(tokens: torch.Tensor) -> torch.Tensor:
        state["mask"] = torch.cat([state["mask"], state["mask"].new_ones(tokens.shape[0], 1)], dim=1)
        o = model(input_ids=tokens, attention_mask=state["mask"], cache=state["cache"], use_cache=True)
        state["cache"] = o.cache
        return o.logits[:, -1]

    return decode_loop(input_ids, out.logits[:, -1], step, opts)


@torch.no_grad()
def decode_seq2seq(
    model: Any, encoder_inputs: dict[str, Any], cache: EncoderDecoderCache | None, opts: DecodeOptions
) -> torch.Tensor:
    """Decode an encoder-decoder model. `encoder_inputs`: `input_ids` or `inputs_embeds` and `attention_mask`
    for the encoder (virtual tokens included); `cache`: the decoder's prefix, or None.
    Returns (B, 1 + new) starting with `decoder_start_token_id`, as transformers does."""
    encoder_outputs = model.get_encoder()(**encoder_inputs, return_dict=True)
    batch = encoder_outputs.last_hidden_state.shape[0]
    start = model.generation_config.decoder_start_token_id
    if start is None:
        start = model.config.decoder_start_token_id
    ids = torch.full(
        (batch, 1), int(start), dtype=torch.long, device=encoder_outputs.last_hidden_state.device
    )
    if cache is None:
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    common = {"encoder_outputs": encoder_outputs, "attention_mask": encoder_inputs.get("attention_mask")}
    out = model(**common, decoder_input_ids=ids, cache=cache, use_cache=True)
    state = {"cache": out.cache}

    def step(tokens: torch.Tensor) -> torch.Tensor:
        o = model(**common, decoder_input_ids=tokens, cache=state["cache"], use_cache=True)
        state["cache"] = o.cache
        return o.logits[:, -1]

    return decode_loop(ids, out.logits[:, -1], step, opts)
