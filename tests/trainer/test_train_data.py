"""Data files, per-task tokenization and collation (no model needed)."""

from __future__ import annotations

import pytest
import torch
from train_helpers import build_tokenizer, write_jsonl

from trainer.config import TrainConfig
from trainer.data import Record, build_label_maps, check_eval_labels, label_set, load_records
from trainer.errors import DataError, EmptyDataError, MissingColumnError, UnseenLabelError
from trainer.features import IGNORE_INDEX, Collator, count_targets, tokenize_records


def make_cfg(task: str, train_file: str = "train.jsonl", **kw) -> TrainConfig:
    return TrainConfig(base_model="b", method="lora", task=task, train_file=train_file, output_dir="o", **kw)


def test_jsonl_and_csv_read_the_same(tmp_path):
    rows = [{"text": "great w1", "label": 1}, {"text": "sad w2", "label": 0}]
    jsonl = write_jsonl(tmp_path / "d.jsonl", rows)
    csv_file = tmp_path / "d.csv"
    csv_file.write_text("text,label\ngreat w1,1\nsad w2,0\n")
    cfg = make_cfg("seq-cls")
    a = [r.values for r in load_records(jsonl, cfg)]
    b = [r.values for r in load_records(csv_file, cfg)]
    assert a == b == [{"text": "great w1", "label": "1"}, {"text": "sad w2", "label": "0"}]


def test_missing_column_names_file_column_found_columns_and_flag(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "ask k1", "answer": "v1"}])
    with pytest.raises(MissingColumnError) as err:
        load_records(path, make_cfg("causal-lm"))
    msg = str(err.value)
    assert str(path) in msg and "'completion'" in msg and "['prompt', 'answer']" in msg
    assert "--completion-column" in msg
    # ... and naming the column fixes it
    recs = load_records(path, make_cfg("causal-lm", completion_column="answer"))
    assert recs[0].values == {"prompt": "ask k1", "completion": "v1"}


def test_empty_file_and_empty_cell(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(EmptyDataError, match="has no rows"):
        load_records(empty, make_cfg("seq-cls"))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a", "label": "x"}, {"text": "", "label": "y"}])
    with pytest.raises(DataError, match=r"row 2: column 'text' \(text\) is empty"):
        load_records(bad, make_cfg("seq-cls"))


def test_bad_json_line_and_unknown_format(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(DataError, match="line 2: not valid JSON"):
        load_records(p, make_cfg("seq-cls"))
    (tmp_path / "x.parquet").touch()
    with pytest.raises(DataError, match=r"unknown format '\.parquet'"):
        load_records(tmp_path / "x.parquet", make_cfg("seq-cls"))


def test_eval_label_never_seen_in_training(tmp_path):
    cfg = make_cfg("seq-cls", train_file="train.jsonl", eval_file="eval.jsonl")
    train = load_records(
        write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}]),
        cfg,
    )
    evaluation = load_records(
        write_jsonl(tmp_path / "eval.jsonl", [{"text": "c", "label": "pos"}, {"text": "d", "label": "meh"}]),
        cfg,
    )
    with pytest.raises(UnseenLabelError) as err:
        check_eval_labels(train, evaluation, cfg)
    msg = str(err.value)
    assert "eval.jsonl row 2" in msg and "'meh'" in msg and "['neg', 'pos']" in msg


def test_label_maps_numeric_and_text():
    assert build_label_maps(["10", "2", "1"])[0] == {"1": 0, "2": 1, "10": 2}
    l2i, i2l = build_label_maps(["pos", "neg"])
    assert l2i == {"neg": 0, "pos": 1} and i2l == {0: "neg", 1: "pos"}


def test_causal_lm_loss_only_on_completion(tmp_path):
    tok = build_tokenizer()
    cfg = make_cfg("causal-lm")
    recs = load_records(
        write_jsonl(tmp_path / "t.jsonl", [{"prompt": "ask k1 k2", "completion": "v1 v2"}]), cfg
    )
    (ex,), _ = tokenize_records(recs, tok, "causal-lm", 64)
    ids = tok("ask k1 k2 v1 v2")["input_ids"]
    assert ex["input_ids"] == [*ids, tok.eos_token_id]
    assert ex["labels"] == [IGNORE_INDEX] * 3 + [*ids[3:], tok.eos_token_id]


def test_causal_lm_truncation_keeps_the_completion(tmp_path):
    tok = build_tokenizer()
    cfg = make_cfg("causal-lm")
    recs = load_records(
        write_jsonl(tmp_path / "t.jsonl", [{"prompt": "w1 w2 w3 w4 w5 w6", "completion": "v1"}]), cfg
    )
    (ex,), stats = tokenize_records(recs, tok, "causal-lm", 4)
    assert stats.truncated == 1 and len(ex["input_ids"]) == 4
    assert ex["labels"][-2:] == [tok.convert_tokens_to_ids("v1"), tok.eos_token_id]


def test_token_cls_one_label_per_word():
    tok = build_tokenizer()
    rec = Record({"tokens": ["k1", "w3", "v2"], "tags": ["KEY", "O", "VAL"]}, 1)
    l2i, _ = build_label_maps(label_set([rec], "token-cls"))
    (ex,), _ = tokenize_records([rec], tok, "token-cls", 32, l2i)
    assert ex["labels"] == [l2i["KEY"], l2i["O"], l2i["VAL"]]


def test_token_cls_alignment_with_subword_tokenizer():
    """A word split into several sub-tokens is labelled on its first sub-token only."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "play": 2, "##ing": 3, "go": 4}
    inner = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    inner.pre_tokenizer = WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, pad_token="[PAD]", unk_token="[UNK]")
    rec = Record({"tokens": ["playing", "go"], "tags": ["VERB", "X"]}, 1)
    (ex,), _ = tokenize_records([rec], tok, "token-cls", 32, {"VERB": 0, "X": 1})
    assert ex["input_ids"] == [2, 3, 4]
    assert ex["labels"] == [0, IGNORE_INDEX, 1]


def test_token_cls_length_mismatch(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [{"tokens": ["a", "b"], "tags": ["X"]}])
    with pytest.raises(DataError, match="2 tokens but 1 tags"):
        load_records(p, make_cfg("token-cls"))


def test_csv_token_lists(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text('tokens,tags\nk1 w2,"[""KEY"", ""O""]"\n')
    (rec,) = load_records(p, make_cfg("token-cls"))
    assert rec.values == {"tokens": ["k1", "w2"], "tags": ["KEY", "O"]}


def test_collator_pads_right_with_ignore_labels():
    collate = Collator(pad_token_id=0, task="causal-lm")
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert count_targets(batch, "causal-lm") == 2  # the first label of a row is never predicted
    cls = Collator(pad_token_id=0, task="seq-cls", token_type_ids=False)
    b = cls(
        [
            {"input_ids": [1], "labels": 1, "token_type_ids": [0]},
            {"input_ids": [2, 3], "labels": 0, "token_type_ids": [0, 1]},
        ]
    )
    assert torch.equal(b["labels"], torch.tensor([1, 0])) and "token_type_ids" not in b


def test_seq_cls_pairs_keep_token_type_ids(tmp_path):
    tok = build_tokenizer()
    cfg = make_cfg("seq-cls")
    recs = load_records(
        write_jsonl(tmp_path / "t.jsonl", [{"text": "k1 w2", "text_pair": "v1", "label": "x"}]), cfg
    )
    assert recs[0].values["text_pair"] == "v1"
    (ex,), _ = tokenize_records(recs, tok, "seq-cls", 32, {"x": 0})
    assert ex["input_ids"] == tok("k1 w2", "v1")["input_ids"] and ex["labels"] == 0
