"""`push_to_hub` uploads exactly what `save_pretrained` writes, for every method, and never the base model.

huggingface_hub's calls are intercepted (HfApi.create_repo / create_branch / file_exists / hf_hub_download /
upload_folder): the folder handed to `upload_folder` is snapshotted byte for byte. Before issue 14 the call fell
through to the transformers model's own `push_to_hub`, which uploads `config.json` + `model.safetensors`.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import peft
import pytest
import torch
from huggingface_hub import CommitInfo, HfApi
from tiny_models import batch, max_abs_diff, perturb_adapter_weights, tiny_bert, tiny_llama, tiny_t5
from transformers.utils.hub import PushToHubMixin

import adapters_core

pytestmark = pytest.mark.filterwarnings("ignore")

METHODS = {
    "lora": (tiny_llama, "llama", adapters_core.LoraConfig, {"r": 4, "task_type": "CAUSAL_LM"}),
    "adalora": (tiny_llama, "llama", adapters_core.AdaLoraConfig, {"init_r": 4, "total_step": 5}),
    "ia3": (tiny_t5, "t5", adapters_core.IA3Config, {"task_type": "SEQ_2_SEQ_LM"}),
    "prompt": (
        tiny_llama,
        "llama",
        adapters_core.PromptTuningConfig,
        {"num_virtual_tokens": 3, "task_type": "CAUSAL_LM"},
    ),
    "p_tuning": (
        tiny_bert,
        "bert",
        adapters_core.PromptEncoderConfig,
        {"num_virtual_tokens": 3, "task_type": "SEQ_CLS"},
    ),
    "prefix": (
        tiny_t5,
        "t5",
        adapters_core.PrefixTuningConfig,
        {"num_virtual_tokens": 3, "task_type": "SEQ_2_SEQ_LM"},
    ),
    "llama_adapter": (
        tiny_llama,
        "llama",
        adapters_core.AdaptionPromptConfig,
        {"adapter_len": 3, "adapter_layers": 1},
    ),
}


def _snapshot(folder: str) -> dict[str, bytes]:
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                files[os.path.relpath(path, folder)] = fh.read()
    return files


class FakeHub:
    """Records what would reach the Hub; `remote_readme` is the README.md the repo already has (or None)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path, remote_readme: str | None = None) -> None:
        self.calls: dict[str, dict] = {}
        self.uploaded: dict[str, bytes] | None = None
        readme = None
        if remote_readme is not None:
            readme = str(tmp_path / "remote_README.md")
            with open(readme, "w") as fh:
                fh.write(remote_readme)

        def create_repo(api, repo_id, **kw):
            self.calls["create_repo"] = {"repo_id": repo_id, **kw}
            return SimpleNamespace(repo_id=repo_id)

        def create_branch(api, repo_id, **kw):
            self.calls["create_branch"] = {"repo_id": repo_id, **kw}

        def file_exists(api, repo_id, filename, **kw):
            return filename == "README.md" and readme is not None

        def hf_hub_download(api, repo_id, filename, **kw):
            assert readme is not None
            return readme

        def upload_folder(api, **kw):
            self.calls["upload_folder"] = kw
            self.uploaded = _snapshot(kw["folder_path"])
            return CommitInfo(
                commit_url=f"https://huggingface.co/{kw['repo_id']}/commit/abc",
                commit_message=kw["commit_message"],
                commit_description=kw["commit_description"] or "",
                oid="abc",
            )

        def base_model_push(*args, **kwargs):
            raise AssertionError("the transformers model's push_to_hub was called: it uploads the base model")

        for name, fn in [
            ("create_repo", create_repo),
            ("create_branch", create_branch),
            ("file_exists", file_exists),
            ("hf_hub_download", hf_hub_download),
            ("upload_folder", upload_folder),
        ]:
            monkeypatch.setattr(HfApi, name, fn)
        monkeypatch.setattr(PushToHubMixin, "push_to_hub", base_model_push)


def _model(method: str):
    build, kind, config_cls, kw = METHODS[method]
    model = adapters_core.get_peft_model(build(), config_cls(**kw))
    perturb_adapter_weights(model, seed=5)
    return model.eval(), build, kind


@pytest.mark.parametrize("method", list(METHODS))
def test_push_uploads_exactly_the_saved_adapter(method: str, monkeypatch, tmp_path) -> None:
    hub = FakeHub(monkeypatch, tmp_path)
    model, build, kind = _model(method)
    commit = model.push_to_hub("me/my-adapter", private=True, token="hf_x", commit_message="adapter v1")
    assert commit.oid == "abc"
    model.save_pretrained(str(tmp_path / "saved"))
    saved = _snapshot(str(tmp_path / "saved"))
    assert hub.uploaded == saved  # same names, same bytes
    assert sorted(saved) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert not {"config.json", "model.safetensors", "pytorch_model.bin"} & set(hub.uploaded)
    readme = hub.uploaded["README.md"].decode()
    assert (
        "library_name: peft" in readme
        and f"- Method: {model.peft_config['default'].peft_type.value}" in readme
    )
    assert hub.calls["create_repo"] == {
        "repo_id": "me/my-adapter",
        "private": True,
        "exist_ok": True,
        "repo_type": "model",
    }
    assert hub.calls["upload_folder"]["commit_message"] == "adapter v1"

    # what was uploaded is a PEFT adapter: real PEFT loads it, with our outputs
    uploaded_dir = tmp_path / "uploaded"
    uploaded_dir.mkdir()
    for name, data in hub.uploaded.items():
        (uploaded_dir / name).write_bytes(data)
    theirs = peft.PeftModel.from_pretrained(build(), str(uploaded_dir)).eval()
    with torch.no_grad():
        assert max_abs_diff(theirs(**batch(kind)).logits, model(**batch(kind)).logits) <= 1e-5


def test_push_names_the_base_model_and_keeps_the_repo_card(monkeypatch, tmp_path) -> None:
    base_dir = str(tmp_path / "base")
    tiny_llama().save_pretrained(base_dir)
    from transformers import AutoModelForCausalLM

    model = adapters_core.get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir), adapters_core.LoraConfig(r=2, task_type="CAUSAL_LM")
    )
    hub = FakeHub(monkeypatch, tmp_path, remote_readme="---\nlicense: apache-2.0\n---\n\nWritten by hand.\n")
    model.push_to_hub("me/lora", revision="v2", create_pr=True, commit_description="why", tags=["sql"])
    readme = hub.uploaded["README.md"].decode()
    assert "Written by hand." in readme and "license: apache-2.0" in readme
    assert f"base_model: {base_dir}" in readme and f"- Base model: {base_dir}" in readme
    assert "- sql" in readme and "- lora" in readme
    assert hub.calls["create_branch"]["branch"] == "v2"
    upload = hub.calls["upload_folder"]
    assert (upload["revision"], upload["create_pr"], upload["commit_description"]) == ("v2", True, "why")
    assert upload["commit_message"] == "Upload model"  # transformers' default for models


def test_push_selected_layout_with_two_adapters(monkeypatch, tmp_path) -> None:
    """Several adapters: PEFT's layout (default at the root, the others in subfolders), as save_pretrained."""
    hub = FakeHub(monkeypatch, tmp_path)
    model, _, _ = _model("lora")
    model.add_adapter("other", adapters_core.LoraConfig(r=2, target_modules=["k_proj"]))
    model.push_to_hub("me/two")
    assert sorted(hub.uploaded) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        os.path.join("other", "adapter_config.json"),
        os.path.join("other", "adapter_model.safetensors"),
    ]
