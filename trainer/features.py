"""Tokenize records per task and pad them into batches.

Every example becomes `{"input_ids": [...], "labels": ...}`; the loss ignores label `-100` (PyTorch's
`CrossEntropyLoss` default), which is how the prompt tokens of a causal-LM example, the continuation
sub-tokens of a word and the padding are kept out of the loss:

    causal-lm   input = prompt ++ completion ++ eos     labels = -100 · len(prompt) ++ completion ++ eos
    seq2seq-lm  input = source                          labels = target (decoder side)
    seq-cls     input = text [+ text_pair]              labels = class id (int)
    token-cls   input = sub-tokens of the words         labels = tag id on each word's first sub-token

Batches are right-padded: training runs full forwards, never incremental decoding, so the pad side only
has to agree with the attention mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .data import Record
from .errors import DataError, EmptyDataError

IGNORE_INDEX = -100
Example = dict[str, Any]


@dataclass
class TokenizeStats:
    """How many examples lost tokens to `max_length` (reported once, not per row)."""

    truncated: int = 0
    no_target: int = 0


def tokenize_records(
    records: Sequence[Record],
    tokenizer: Any,
    task: str,
    max_length: int,
    label2id: dict[str, int] | None = None,
    *,
    source: str = "data",
) -> tuple[list[Example], TokenizeStats]:
    """Tokenize every record for `task`; drops nothing silently (counts are returned)."""
    stats = TokenizeStats()
    fn = {
        "causal-lm": _causal_lm,
        "seq2seq-lm": _seq2seq_lm,
        "seq-cls": _seq_cls,
        "token-cls": _token_cls,
    }[task]
    examples = [fn(rec.values, tokenizer, max_length, label2id, stats) for rec in records]
    if task in ("causal-lm", "token-cls"):
        first = 1 if task == "causal-lm" else 0  # a causal LM never predicts a row's first token
        kept = [ex for ex in examples if any(lab != IGNORE_INDEX for lab in ex["labels"][first:])]
        stats.no_target = len(examples) - len(kept)
        examples = kept
    if not examples:
        raise EmptyDataError(
            f"{source}: no example keeps a training target after tokenization (max_length={max_length}); "
            "raise --max-length or shorten the prompts."
        )
    return examples, stats


def _ids(tokenizer: Any, text: str, *, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _causal_lm(values, tokenizer, max_length, _label2id, stats) -> Example:
    prompt = _ids(tokenizer, values["prompt"], special=True)
    completion = _ids(tokenizer, values["completion"], special=False)
    if tokenizer.eos_token_id is not None:
        completion.append(tokenizer.eos_token_id)  # so the adapter learns where a completion ends
    if len(prompt) + len(completion) > max_length:
        stats.truncated += 1
        # Keep the completion (it carries the loss): cut the prompt from the left, then the completion.
        completion = completion[:max_length]
        prompt = (
            prompt[len(prompt) - (max_length - len(completion)) :] if max_length > len(completion) else []
        )
    return {"input_ids": prompt + completion, "labels": [IGNORE_INDEX] * len(prompt) + completion}


def _seq2seq_lm(values, tokenizer, max_length, _label2id, stats) -> Example:
    source = _ids(tokenizer, values["source"], special=True)
    target = _ids(tokenizer, values["target"], special=True)
    if len(source) > max_length or len(target) > max_length:
        stats.truncated += 1
    return {"input_ids": source[:max_length], "labels": target[:max_length]}


def _seq_cls(values, tokenizer, max_length, label2id, stats) -> Example:
    assert label2id is not None
    enc = tokenizer(values["text"], values.get("text_pair"), truncation=False)
    ids = list(enc["input_ids"])
    if len(ids) > max_length:
        stats.truncated += 1
        ids = ids[:max_length]
    ex: Example = {"input_ids": ids, "labels": label2id[values["label"]]}
    if "token_type_ids" in enc:
        ex["token_type_ids"] = list(enc["token_type_ids"])[:max_length]
    return ex


def _token_cls(values, tokenizer, max_length, label2id, stats) -> Example:
    assert label2id is not None
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("token-cls needs a fast tokenizer (word_ids() maps sub-tokens to words).")
    enc = tokenizer(values["tokens"], is_split_into_words=True, truncation=False)
    labels: list[int] = []
    previous: int | None = None
    for word in enc.word_ids():
        # Only the first sub-token of a word carries its tag; the rest and special tokens are ignored.
        labels.append(IGNORE_INDEX if word is None or word == previous else label2id[values["tags"][word]])
        previous = word
    ids = list(enc["input_ids"])
    if len(ids) > max_length:
        stats.truncated += 1
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


# -- collation ---------------------------------------------------------------------------------------


@dataclass
class Collator:
    """Right-pad a list of examples into tensors: `input_ids`, `attention_mask`, `labels` (+ `token_type_ids`).

    `labels` is `(B,)` for seq-cls, `(B, T)` for causal-lm/token-cls (same length as the input) and
    `(B, T_dec)` for seq2seq-lm; padded positions hold -100.
    """

    pad_token_id: int
    task: str
    token_type_ids: bool = True  # False for models whose forward has no token_type_ids (Llama, GPT-2)

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        batch = {
            "input_ids": _pad([ex["input_ids"] for ex in examples], self.pad_token_id),
            "attention_mask": _pad([[1] * len(ex["input_ids"]) for ex in examples], 0),
        }
        if self.token_type_ids and "token_type_ids" in examples[0]:
            batch["token_type_ids"] = _pad([ex["token_type_ids"] for ex in examples], 0)
        if self.task == "seq-cls":
            batch["labels"] = torch.tensor([ex["labels"] for ex in examples], dtype=torch.long)
        else:
            batch["labels"] = _pad([ex["labels"] for ex in examples], IGNORE_INDEX)
        return batch


def _pad(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    return out


def count_targets(batch: dict[str, torch.Tensor], task: str) -> int:
    """How many positions carry a loss: the denominator of the per-token mean loss.

    Causal LMs predict token t+1 from t, so the first label of each row never counts.
    """
    labels = batch["labels"]
    if task in ("seq-cls", "image-cls"):
        return int(labels.numel())
    if task == "causal-lm":
        labels = labels[:, 1:]
    return int((labels != IGNORE_INDEX).sum())
