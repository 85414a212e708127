"""The chat demo (`swapyard serve` without `--base-model`, or `--demo chat`): built on first run, offline, cached.

A tiny Llama-style model taught to answer greetings in English, plus two adapters trained with `swapyard train`
(LoRA): `french` answers in French, `pirate` in pirate speak. Same prompt, three answers: the adapter visibly
changes what the model says.

Everything is deterministic (fixed seeds) and lives in one directory (default `~/.cache/swapyard/demo-v1`,
or `--demo-dir` / `SWAPYARD_DEMO_DIR`); a complete build is marked by a `READY` file, so later starts skip it.
Building takes well under a minute on a 2-core CPU; a machine that already has the demo cache never builds it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .common import DEMO_VERSION, READY_FILE, Demo, default_dir, train_lora

# prompt -> (english, french, pirate). Prompts are what a newcomer types; answers are what each adapter says.
DIALOGUE: dict[str, tuple[str, str, str]] = {
    "hello": (
        "hello ! how can i help you today ?",
        "bonjour ! comment puis je vous aider ?",
        "ahoy matey ! what be ye needin ?",
    ),
    "hi": (
        "hi there ! nice to meet you .",
        "salut ! ravi de vous rencontrer .",
        "arr , well met , ye landlubber !",
    ),
    "hey": (
        "hey ! what can i do for you ?",
        "coucou ! que puis je faire pour vous ?",
        "avast ! what can this old sea dog do for ye ?",
    ),
    "good morning": (
        "good morning ! i hope you slept well .",
        "bonjour ! vous avez bien dormi ?",
        "mornin , matey ! the sea be calm today .",
    ),
    "good evening": (
        "good evening ! how was your day ?",
        "bonsoir ! comment était votre journée ?",
        "evenin ! the rum be flowin tonight .",
    ),
    "how are you ?": (
        "i am fine , thank you for asking .",
        "je vais bien , merci de demander .",
        "i be shipshape , thank ye kindly !",
    ),
    "what is your name ?": (
        "my name is yard , a tiny demo model .",
        "je m appelle yard , un petit modèle de démo .",
        "they call me cap n yard , scourge of the seven seas !",
    ),
    "who are you ?": (
        "i am a small model served by swapyard .",
        "je suis un petit modèle servi par swapyard .",
        "i be a wee pirate model , sailin with swapyard !",
    ),
    "thank you": ("you are welcome !", "de rien , avec plaisir !", "ye be most welcome , matey !"),
    "goodbye": ("goodbye ! have a nice day .", "au revoir ! bonne journée .", "fair winds to ye , matey !"),
}
ADAPTERS = {"french": 1, "pirate": 2}  # adapter name -> column of DIALOGUE
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
# The chat template answers the last user message, the way the demo model was trained.
CHAT_TEMPLATE = (
    "{{ bos_token }}{{ (messages | selectattr('role', 'equalto', 'user') | list | last)['content'] }}"
)


def prepare_demo(directory: str | os.PathLike[str] | None = None, *, progress: bool = True) -> Demo:
    """The demo's base and adapters, built into `directory` unless a finished build is already there."""
    root = Path(directory) if directory else default_dir()
    demo = Demo(base_dir=root / "base", adapter_dir=root / "adapters")
    if (root / READY_FILE).is_file():
        return demo
    if root.exists():  # an interrupted build: start over
        shutil.rmtree(root)
    root.mkdir(parents=True)
    stages = ["tokenizer", "base model", *(f"adapter {n}" for n in ADAPTERS)]
    with tqdm(
        total=len(stages), desc="preparing the Swapyard demo", disable=not progress, unit="step"
    ) as bar:
        bar.set_postfix_str(stages[0])
        tokenizer = build_tokenizer()
        tokenizer.save_pretrained(demo.base_dir)
        bar.update()
        bar.set_postfix_str(stages[1])
        train_base(tokenizer).save_pretrained(demo.base_dir)
        bar.update()
        for name, column in ADAPTERS.items():
            bar.set_postfix_str(f"adapter {name}")
            train_adapter(demo.base_dir, root / "data", demo.adapter_dir / name, column)
            bar.update()
    (root / READY_FILE).write_text(json.dumps({"version": DEMO_VERSION}), encoding="utf-8")
    return demo


def _prompts() -> list[tuple[str, str]]:
    """(prompt variant, canonical prompt): each greeting also with punctuation and capitals a user might type."""
    out = []
    for prompt in DIALOGUE:
        bare = prompt.rstrip(" ?")
        for variant in {prompt, bare, f"{bare} !", f"{bare} .", f"{bare} ?", f"{bare} , yard"}:
            out.append((variant, prompt))
    return sorted(out)


def build_tokenizer() -> Any:
    """Lower-cased word-level tokenizer over the demo's words (punctuation splits off)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words: list[str] = []
    texts = [v for v, _ in _prompts()] + [a for answers in DIALOGUE.values() for a in answers]
    pre = pre_tokenizers.Whitespace()
    for text in texts:
        for word, _ in pre.pre_tokenize_str(text.lower()):
            if word not in words:
                words.append(word)
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _examples(tokenizer: Any, column: int) -> list[tuple[list[int], int]]:
    """(ids, prompt length) of prompt ++ answer ++ eos, for every prompt variant."""
    out = []
    for variant, prompt in _prompts():
        p = tokenizer(variant)["input_ids"]
        a = tokenizer(" " + DIALOGUE[prompt][column], add_special_tokens=False)["input_ids"]
        out.append((p + a + [tokenizer.eos_token_id], len(p)))
    return out


def train_base(tokenizer: Any, steps: int = 200) -> Any:
    """A tiny Llama-style LM (adapters_core/tiny.py) trained from scratch to give the English answers (loss on
    answers only)."""
    from adapters_core.tiny import tiny_model

    model = tiny_model(
        "llama",
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        max_position_embeddings=256,
    )
    examples = _examples(tokenizer, column=0)
    width = max(len(ids) for ids, _ in examples)
    ids = torch.zeros(len(examples), width, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (row, n_prompt) in enumerate(examples):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, n_prompt : len(row)] = torch.tensor(row[n_prompt:])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def train_adapter(base_dir: Path, data_dir: Path, out: Path, column: int) -> None:
    """Train a LoRA adapter with `swapyard train` (in a child process) on one answer style."""
    rows = [{"prompt": v, "completion": " " + DIALOGUE[p][column]} for v, p in _prompts()]
    # lm_head too (LORA_TARGETS): the base never produced these words, so its output rows for them need moving.
    train_lora(
        rows,
        base_dir=base_dir,
        data_dir=data_dir,
        out=out,
        seed=column,
        task="causal-lm",
        target_modules=LORA_TARGETS,
    )
