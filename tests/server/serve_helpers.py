"""Tiny served bases and real-PEFT adapters of every method, for the API and e2e tests (no network).

A base directory is a tiny transformers model (tests/tiny_models.py, fixed seed) next to a WordLevel tokenizer
whose vocabulary is exactly the model's 256 ids ("<pad> <s> </s> <unk> w0 … w251"), so every id decodes to a
word. Adapters are made with real PEFT and perturbed so that each visibly changes the output.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient
from tiny_models import VOCAB, perturb_adapter_weights, tiny_bert, tiny_llama, tiny_t5
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import AutoModelForCausalLM, BertForSequenceClassification, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # pad 0, bos 1, eos 2 as in tiny_models
WORDS = [f"w{i}" for i in range(VOCAB - len(SPECIALS))]
# A chat template, so /v1/chat/completions has something to apply (plain words the vocabulary knows).
LLAMA_CONTEXT = 512  # positions of the served tiny Llama
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_base(kind: str, directory: Path) -> Path:
    """Write tiny `kind` (llama, t5, bert) and the tokenizer to `directory`."""
    model: Any = {"llama": tiny_llama, "t5": tiny_t5, "bert": tiny_bert}[kind]()
    if kind == "llama":
        with torch.no_grad():  # a sharper head: greedy tokens then differ clearly between adapters
            model.get_output_embeddings().weight.mul_(10.0)
        # The server clamps its token limits to the context: give the long-request tests room (RoPE's
        # weights do not depend on this number, so the outputs are unchanged).
        model.config.max_position_embeddings = LLAMA_CONTEXT
    if kind == "t5":
        model.config.eos_token_id = 2
        model.generation_config.eos_token_id = 2
    model.save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return directory


def causal_configs() -> dict[str, Any]:
    """One PEFT config per method for the Llama base (names are the adapter names)."""
    import peft

    qv = {"target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}
    return {
        "lora4": peft.LoraConfig(r=4, lora_alpha=8, **qv),
        "lora8": peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
        "dora": peft.LoraConfig(r=4, use_dora=True, **qv),
        "adalora": peft.AdaLoraConfig(init_r=6, target_r=4, total_step=10, **qv),
        "ia3": peft.IA3Config(
            target_modules=["k_proj", "v_proj", "down_proj"],
            feedforward_modules=["down_proj"],
            task_type="CAUSAL_LM",
        ),
        "prompt": peft.PromptTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"),
        "ptuning": peft.PromptEncoderConfig(
            num_virtual_tokens=3, encoder_hidden_size=32, task_type="CAUSAL_LM"
        ),
        "prefix": peft.PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"),
        "llama_adapter": peft.AdaptionPromptConfig(adapter_len=3, adapter_layers=1, task_type="CAUSAL_LM"),
    }


def make_causal_adapters(base_dir: Path, out: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Save a perturbed PEFT adapter per method under out/<name>."""
    import peft

    written = {}
    for i, (name, config) in enumerate(causal_configs().items()):
        if names is not None and name not in names:
            continue
        base = AutoModelForCausalLM.from_pretrained(base_dir)
        model = peft.get_peft_model(base, config)
        perturb_adapter_weights(model, seed=10 + i, scale=0.5)
        model.save_pretrained(out / name)
        written[name] = out / name
    return written


def make_t5_adapter(base_dir: Path, out: Path) -> Path:
    import peft
    from transformers import AutoModelForSeq2SeqLM

    model = peft.get_peft_model(
        AutoModelForSeq2SeqLM.from_pretrained(base_dir),
        peft.LoraConfig(r=4, target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM"),
    )
    perturb_adapter_weights(model, seed=3, scale=0.5)
    model.save_pretrained(out / "t5lora")
    return out / "t5lora"


def make_cls_adapters(base_dir: Path, out: Path) -> dict[str, tuple[Path, list[str]]]:
    """Two classification adapters with different label sets: 'sentiment' (2 labels, with the trainer's
    label_map.json) and 'topic' (4 labels, PEFT only: labels come out as LABEL_i)."""
    import peft

    specs = {"sentiment": ["negative", "positive"], "topic": ["LABEL_0", "LABEL_1", "LABEL_2", "LABEL_3"]}
    written = {}
    for i, (name, labels) in enumerate(specs.items()):
        base = BertForSequenceClassification.from_pretrained(
            base_dir, num_labels=len(labels), ignore_mismatched_sizes=True
        )
        model = peft.get_peft_model(
            base, peft.LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS")
        )
        perturb_adapter_weights(model, seed=20 + i, scale=0.5)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "classifier" in n and p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
        model.save_pretrained(out / name)
        if name == "sentiment":
            id2label = {str(j): lab for j, lab in enumerate(labels)}
            (out / name / "label_map.json").write_text(
                json.dumps({"label2id": {v: int(k) for k, v in id2label.items()}, "id2label": id2label})
            )
        written[name] = (out / name, labels)
    return written


def prompt(seed: int, length: int = 5) -> str:
    """A prompt of `length` vocabulary words."""
    g = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (length,), generator=g))


def reference_tokens(multi: Any, tok: Any, text: str, adapter: str | None, max_new_tokens: int) -> list[int]:
    """Greedy tokens of `text` under `adapter`, that row alone (MultiAdapterModel.generate), through EOS."""
    ids = torch.tensor([tok(text)["input_ids"]])
    out = multi.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        adapter_names=[adapter],
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    new = (
        out[0, ids.shape[1] :].tolist() if not multi.model.config.is_encoder_decoder else out[0, 1:].tolist()
    )
    eos = tok.eos_token_id
    return new[: new.index(eos) + 1] if eos in new else new


def all_at_once(client: TestClient, engine: Any, bodies: list[dict]) -> list[Any]:
    """POST every body while the engine is held, so that they all wait in the queue together, queued in
    this order (each is queued before the next is sent)."""
    out: list[Any] = [None] * len(bodies)

    def post(i: int) -> None:
        out[i] = client.post("/generate", json=bodies[i])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    with engine.hold() as held:
        for i, t in enumerate(threads):
            t.start()
            held.wait_queued(i + 1)
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a request got no response"
    return out
