"""A tiny Llama served with a byte-level BPE tokenizer (GPT-2's scheme, trained here on a fixed corpus), so that
any text — JSON, CJK, emoji — can be written, and multi-byte characters split across tokens: what structured
output and incremental detokenization need. Same seed, same corpus: the same model and tokenizer every run.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from adapters_core.tiny import tiny_model

SPECIALS = ["<pad>", "<s>", "</s>"]
BYTE_VOCAB = 320  # 256 bytes + 3 specials + 61 merges
CORPUS = [
    '{"name": "x", "ok": true, "n": 12, "tags": ["a", "b"]}',
    "the quick brown fox jumps over the lazy dog",
    "héllo wörld, naïve café — 中文字符 and emoji 🙂🚀 mixed in",
    '{"color": "red", "size": 3}',
] * 4
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"


def build_bytelevel_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BYTE_VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_bytelevel_base(directory: Path) -> Path:
    """A tiny Llama whose vocabulary is the byte-level tokenizer's (pad 0, bos 1, eos 2)."""
    tokenizer = build_bytelevel_tokenizer()
    model = tiny_model("llama", 0, vocab_size=len(tokenizer), max_position_embeddings=512)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
