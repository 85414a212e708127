"""Write tiny base models and tokenizers so the examples run offline, in seconds, on a CPU.

    python examples/make_tiny_base.py                 # -> examples/tiny-bases/{bert,t5,llama}
    swapyard train --config examples/lora-text-classification/config.yaml

Each base is a randomly initialised 2-layer model (hidden size 64) saved with `save_pretrained`, next to a
word-level tokenizer trained on the examples' own data (`tokenizers`, wrapped in PreTrainedTokenizerFast),
so `base_model:` in the configs is a local path. They show the mechanics, not accuracy: for real results
point `base_model` at a pretrained model (e.g. `--base-model FacebookAI/roberta-base`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from tokenizers.trainers import WordLevelTrainer
from transformers import PreTrainedTokenizerFast

from adapters_core.tiny import tiny_model

EXAMPLES = Path(__file__).resolve().parent
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<cls>", "<sep>"]  # ids 0..5
TEXT_COLUMNS = ("text", "text_pair", "prompt", "completion", "source", "target")
# Extra text the configs use (prompt tuning's TEXT init) that must be in the vocabulary.
EXTRA_TEXT = ["Classify if the tweet is a complaint or not :"]


def corpus() -> list[str]:
    """Every text cell of every example data file."""
    texts = list(EXTRA_TEXT)
    for path in sorted(EXAMPLES.glob("*/*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts += [str(row[c]) for c in TEXT_COLUMNS if c in row]
    return texts


def build_tokenizer(kind: str, texts: list[str]) -> PreTrainedTokenizerFast:
    """Lower-cased word-level tokenizer; special tokens placed as each model family expects."""
    tok = Tokenizer(WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, WordLevelTrainer(special_tokens=SPECIALS, min_frequency=1))
    ids = {t: tok.token_to_id(t) for t in SPECIALS}
    templates = {
        "bert": ("<cls> $A <sep>", "<cls> $A <sep> $B:1 <sep>:1"),  # [CLS] a [SEP] b [SEP], segment ids
        "t5": ("$A </s>", "$A </s> $B </s>"),  # T5 ends every sequence with eos
        "llama": ("<s> $A", "<s> $A $B"),  # decoder LMs start with bos
    }[kind]
    tok.post_processor = processors.TemplateProcessing(
        single=templates[0], pair=templates[1], special_tokens=[(t, ids[t]) for t in SPECIALS]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        cls_token="<cls>",
        sep_token="<sep>",
    )


def build_model(kind: str, vocab_size: int) -> torch.nn.Module:
    """A tiny `kind` base (adapters_core/tiny.py) for this vocabulary, with transformers' default dropout
    (the examples train)."""
    special = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    if kind == "bert":
        dropout = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
        return tiny_model("bert", vocab_size=vocab_size, num_labels=2, **dropout)
    if kind == "t5":
        return tiny_model("t5", vocab_size=vocab_size, dropout_rate=0.1, **special)
    return tiny_model("llama", vocab_size=vocab_size, **special)


def build_all(out: Path) -> dict[str, Path]:
    """Write `out/{bert,t5,llama}` (model + tokenizer); returns the directories."""
    texts = corpus()
    written = {}
    for kind in ("bert", "t5", "llama"):
        tokenizer = build_tokenizer(kind, texts)
        model = build_model(kind, len(tokenizer))
        target = out / kind
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        written[kind] = target
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=EXAMPLES / "tiny-bases", help="where to write the bases")
    args = parser.parse_args()
    for kind, path in build_all(args.out).items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
