"""The classification demo (`swapyard serve --demo sentiment`): a tiny BERT-style encoder and two
classification adapters with different label sets, trained by `swapyard train --task seq-cls` (LoRA + head):

    sentiment   negative / positive
    emotion     joy / anger / sadness / fear

Built on first run like the chat demo (demo/chat.py), deterministic, cached, offline. The base is randomly
initialised: the adapters learn which words carry the feeling — enough to show per-request heads and labels.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .common import READY_FILE, Demo, default_dir, train_lora

# word -> (sentiment, emotion)
FEELINGS: dict[str, tuple[str, str]] = {
    "wonderful": ("positive", "joy"),
    "lovely": ("positive", "joy"),
    "great": ("positive", "joy"),
    "delightful": ("positive", "joy"),
    "happy": ("positive", "joy"),
    "brilliant": ("positive", "joy"),
    "charming": ("positive", "joy"),
    "fantastic": ("positive", "joy"),
    "beautiful": ("positive", "joy"),
    "awful": ("negative", "anger"),
    "outrageous": ("negative", "anger"),
    "infuriating": ("negative", "anger"),
    "annoying": ("negative", "anger"),
    "sad": ("negative", "sadness"),
    "depressing": ("negative", "sadness"),
    "gloomy": ("negative", "sadness"),
    "heartbreaking": ("negative", "sadness"),
    "scary": ("negative", "fear"),
    "terrifying": ("negative", "fear"),
    "frightening": ("negative", "fear"),
    "creepy": ("negative", "fear"),
}
SUBJECTS = [
    "the movie",
    "this day",
    "the food",
    "my trip",
    "the news",
    "the ending",
    "that song",
    "the weather",
]
TEMPLATES = ["{s} was {w}", "{s} is so {w}", "what a {w} day", "i think {s} was {w}", "{w} , really {w}"]
ADAPTER_COLUMNS = {"sentiment": 0, "emotion": 1}
SPECIALS = ["<pad>", "<cls>", "<sep>", "<unk>"]


def prepare_sentiment_demo(directory: str | os.PathLike[str] | None = None, *, progress: bool = True) -> Demo:
    """Base + adapters of the classification demo, built unless a finished build is already there."""
    root = Path(directory) if directory else default_dir().with_name(default_dir().name + "-sentiment")
    demo = Demo(base_dir=root / "base", adapter_dir=root / "adapters")
    if (root / READY_FILE).is_file():
        return demo
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    stages = ["tokenizer + base", *(f"adapter {n}" for n in ADAPTER_COLUMNS)]
    with tqdm(
        total=len(stages), desc="preparing the sentiment demo", disable=not progress, unit="step"
    ) as bar:
        bar.set_postfix_str(stages[0])
        tokenizer = _tokenizer()
        tokenizer.save_pretrained(demo.base_dir)
        _base(len(tokenizer)).save_pretrained(demo.base_dir)
        bar.update()
        for name, column in ADAPTER_COLUMNS.items():
            bar.set_postfix_str(f"adapter {name}")
            _train(demo.base_dir, root / "data", demo.adapter_dir / name, column)
            bar.update()
    (root / READY_FILE).write_text(json.dumps({"demo": "sentiment"}), encoding="utf-8")
    return demo


def _sentences() -> list[tuple[str, str]]:
    """(text, feeling word) for every template, subject and word."""
    return [
        (t.format(s=s, w=w), w)
        for t, s, w in itertools.product(TEMPLATES, SUBJECTS, FEELINGS)
        if "{s}" in t or s == SUBJECTS[0]
    ]


def _tokenizer() -> Any:
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words: list[str] = []
    for text, _ in _sentences():
        for word, _ in pre.pre_tokenize_str(text):
            if word not in words:
                words.append(word)
    tok = Tokenizer(WordLevel({t: i for i, t in enumerate(SPECIALS + words)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(
        single="<cls> $A <sep>", special_tokens=[("<cls>", 1), ("<sep>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", cls_token="<cls>", sep_token="<sep>", unk_token="<unk>"
    )


def _base(vocab_size: int) -> Any:
    from adapters_core.tiny import tiny_model

    return tiny_model(
        "bert",
        vocab_size=vocab_size,
        max_position_embeddings=64,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
        hidden_dropout_prob=0.1,  # transformers' default: the demo trains
        attention_probs_dropout_prob=0.1,
    )


def _train(base_dir: Path, data_dir: Path, out: Path, column: int) -> None:
    rows = [{"text": text, "label": FEELINGS[word][column]} for text, word in _sentences()]
    train_lora(
        rows,
        base_dir=base_dir,
        data_dir=data_dir,
        out=out,
        seed=column,
        task="seq-cls",
        target_modules=["query", "key", "value", "dense"],
    )
