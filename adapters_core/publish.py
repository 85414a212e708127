"""What leaves an `AdapterModel`: the files `save_pretrained` writes (PEFT's layout, a model card) and
`push_to_hub`, which uploads exactly those files.

PEFT's `create_or_update_model_card` sets the card's metadata (`library_name: peft`, `base_model`, tags, the
pipeline tag of causal LMs) and appends a framework line; an existing README.md in the folder is updated, not
replaced. We do the same, and also name the adapter method and the base model in the text.

`push_to_hub` goes through huggingface_hub (`HfApi.create_repo`, then `HfApi.upload_folder` of a temporary
`save_pretrained` folder). It never uploads the base model: the transformers model's own `push_to_hub` (what an
attribute pass-through would reach) is not used.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .config import PEFT_FORMAT_VERSION, TaskType
from .peft_names import DEFAULT_ADAPTER_NAME, PICKLE_WEIGHTS_NAME
from .peft_options import embedding_layers_state
from .weights_io import save_adapter_weights

if TYPE_CHECKING:
    from .adapter_model import AdapterModel

README_NAME = "README.md"
ADAPTER_HEADING = "## Adapter"
FRAMEWORK_HEADING = "### Framework versions"
FRAMEWORK_LINE = f"- PEFT {PEFT_FORMAT_VERSION} (file format; written by Swapyard)"


def name_or_path(model: nn.Module) -> str | None:
    """PEFT records `model.name_or_path`; models built from a config have "" (saved as null)."""
    return model.__dict__.get("name_or_path", None) or getattr(model, "name_or_path", None) or None


def write_adapter_files(
    model: AdapterModel,
    save_directory: str,
    names: list[str],
    safe_serialization: bool = True,
    save_embedding_layers: str | bool = "auto",
) -> None:
    """PEFT's layout: the model card at the root, adapter "default" at the root, others in subfolders."""
    os.makedirs(save_directory, exist_ok=True)
    update_model_card(model, save_directory)
    for name in names:
        out_dir = save_directory if name == DEFAULT_ADAPTER_NAME else os.path.join(save_directory, name)
        state = embedding_layers_state(model, name, save_embedding_layers)
        if safe_serialization:
            save_adapter_weights(state, out_dir)
        else:  # PEFT's torch.save of the same dict; it loads back with torch.load(weights_only=True)
            os.makedirs(out_dir, exist_ok=True)
            plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
            torch.save(plain, os.path.join(out_dir, PICKLE_WEIGHTS_NAME))
        config = model.peft_config[name]
        changes: dict[str, Any] = {"inference_mode": True}
        if config.base_model_name_or_path is None:
            changes["base_model_name_or_path"] = name_or_path(model.get_base_model())
        if config.task_type is None:
            base_cls = type(model.get_base_model())
            changes["auto_mapping"] = {
                "base_model_class": base_cls.__name__,
                "parent_library": base_cls.__module__,
            }
        dataclasses.replace(config, **changes).save_pretrained(out_dir)


def _value(v: object) -> str:
    return str(getattr(v, "value", v))


def model_card_tags(model: AdapterModel) -> list[str]:
    """PEFT's tags (the base's `model_tags`, "transformers", `base_model:adapter:<base>`) plus the method."""
    from transformers import PreTrainedModel

    base = model.get_base_model()
    tags = set(getattr(base, "model_tags", None) or [])
    if isinstance(base, PreTrainedModel):
        tags.add("transformers")
    tags.add(_value(model.active_peft_config.peft_type).lower())
    name = base_model_name(model)
    if name:
        tags.add(f"base_model:adapter:{name}")
    return sorted(tags)


def base_model_name(model: AdapterModel) -> str | None:
    """The base checkpoint's name: the adapter config's, else the transformers config's `_name_or_path`."""
    name = model.active_peft_config.base_model_name_or_path
    if name:
        return name
    config = getattr(model.get_base_model(), "config", None)
    return getattr(config, "_name_or_path", None) or None


def update_model_card(model: AdapterModel, output_dir: str, extra_tags: list[str] | None = None) -> None:
    """Create or update `output_dir/README.md` (PEFT's `create_or_update_model_card`, method named too)."""
    from huggingface_hub import ModelCard, ModelCardData

    path = os.path.join(output_dir, README_NAME)
    card = ModelCard.load(path) if os.path.exists(path) else ModelCard.from_template(ModelCardData())
    card.data["library_name"] = "peft"
    tags = set(card.data.tags or []) | set(model_card_tags(model)) | set(extra_tags or [])
    card.data["tags"] = sorted(tags)
    config = model.active_peft_config
    if not card.data.pipeline_tag and config.task_type == TaskType.CAUSAL_LM:
        card.data.pipeline_tag = "text-generation"
    base = base_model_name(model)
    if base:
        card.data["base_model"] = base
    lines = card.text.splitlines()
    if ADAPTER_HEADING not in lines:
        task = _value(config.task_type) if config.task_type is not None else "none"
        lines += [
            "",
            ADAPTER_HEADING,
            "",
            f"- Method: {_value(config.peft_type)} (PEFT `peft_type`)",
            f"- Base model: {base or 'not recorded'}",
            f"- Task type: {task}",
            "- Load with PEFT (`PeftModel.from_pretrained(base, repo_id)`) or Swapyard "
            "(`AdapterModel.from_pretrained(base, repo_id)`).",
        ]
    if FRAMEWORK_LINE not in lines:
        if FRAMEWORK_HEADING in lines:
            lines.insert(lines.index(FRAMEWORK_HEADING) + 2, FRAMEWORK_LINE)
        else:
            lines += ["", FRAMEWORK_HEADING, "", FRAMEWORK_LINE]
    card.text = "\n".join(lines)
    card.save(path)


def push_to_hub(
    model: AdapterModel,
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    tags: list[str] | None = None,
) -> Any:
    """Upload what `model.save_pretrained` writes to the Hub model repo `repo_id`; returns the `CommitInfo`.

    As transformers' `push_to_hub` (which PEFT uses): the repo is created if missing (`private` applies only
    then), a `revision` branch is created if missing, and an existing README.md in the repo is updated rather
    than replaced.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        try:
            if api.file_exists(repo_id, README_NAME, revision=revision):
                card = api.hf_hub_download(repo_id, README_NAME, revision=revision)
                shutil.copyfile(card, os.path.join(folder, README_NAME))
        except (EntryNotFoundError, RevisionNotFoundError):
            pass
        model.save_pretrained(folder)
        if tags:
            update_model_card(model, folder, extra_tags=tags)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message or "Upload model",
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
        )
