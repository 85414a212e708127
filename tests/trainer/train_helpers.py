"""Offline bases and synthetic tasks for the trainer tests.

A base model directory is a tiny transformers model (tests/tiny_models.py, fixed seed) saved next to a
WordLevel tokenizer over the synthetic vocabulary, so `--base-model` is a local path and nothing touches
the network. The synthetic tasks are small and learnable in a few dozen steps:

    causal-lm / seq2seq-lm   "ask kI" -> "vI"          (8 keys; the loss covers the answer only)
    seq-cls                  a good or bad word + 4 filler words -> "pos" / "neg"
    token-cls                words tagged by their group: "KEY", "VAL" or "O"
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from tiny_models import tiny_bert, tiny_gpt2, tiny_llama, tiny_t5
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast

KEYS = [f"k{i}" for i in range(8)]
VALUES = [f"v{i}" for i in range(8)]
GOOD = ["great", "lovely", "superb", "fine"]
BAD = ["awful", "broken", "poor", "sad"]
FILLER = [f"w{i}" for i in range(16)]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3: pad 0, bos 1, eos 2 as in tiny_models
WORDS = ["ask", *KEYS, *VALUES, *GOOD, *BAD, *FILLER]


def build_tokenizer(words: list[str] = WORDS) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def save_base(kind: str, directory: Path) -> Path:
    """Write the tiny `kind` model (llama, gpt2, bert, t5) and the tokenizer to `directory`."""
    model = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert, "t5": tiny_t5}[kind]()
    if kind in ("llama", "gpt2"):
        # A random LM head with init std 0.02 gives logits of about ±1: even a perfect adapter could not get
        # the loss far below ln(vocab). A pretrained model's head is sharper; scale it to look like one.
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(10.0)
    if kind == "t5":
        # Our tokenizer's eos is id 2 (tiny_t5 says 1, an unused id here).
        model.config.eos_token_id = 2
        model.generation_config.eos_token_id = 2
    model.save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return directory


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def lm_rows(n: int, seed: int, task: str = "causal-lm") -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        i = rng.randrange(len(KEYS))
        if task == "causal-lm":
            rows.append({"prompt": f"ask {KEYS[i]}", "completion": VALUES[i]})
        else:
            rows.append({"source": f"ask {KEYS[i]}", "target": VALUES[i]})
    return rows


def cls_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for r in range(n):
        good = r % 2 == 0
        # The signal word comes first: BERT-style classifiers pool the first position.
        words = [rng.choice(GOOD if good else BAD), *rng.sample(FILLER, 4)]
        rows.append({"text": " ".join(words), "label": "pos" if good else "neg"})
    return rows


def token_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(KEYS + VALUES + FILLER) for _ in range(6)]
        tags = ["KEY" if w in KEYS else "VAL" if w in VALUES else "O" for w in words]
        rows.append({"tokens": words, "tags": tags})
    return rows


ROWS = {
    "causal-lm": lm_rows,
    "seq2seq-lm": lambda n, s: lm_rows(n, s, "seq2seq-lm"),
    "seq-cls": cls_rows,
    "token-cls": token_rows,
}


def write_task_data(directory: Path, task: str, n_train: int = 64, n_eval: int = 16) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    train = write_jsonl(directory / f"{task}-train.jsonl", ROWS[task](n_train, 0))
    evaluation = write_jsonl(directory / f"{task}-eval.jsonl", ROWS[task](n_eval, 1))
    return train, evaluation


def clean_env(monkeypatch: Any) -> None:
    """Drop SWAPYARD_* variables from the test's environment (a developer's shell may set some)."""
    import os

    for key in list(os.environ):
        if key.startswith("SWAPYARD_"):
            monkeypatch.delenv(key)
