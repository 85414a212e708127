"""Push a finished output directory to the Hugging Face Hub (huggingface_hub does the work)."""

from __future__ import annotations

from pathlib import Path

# Training state is large and useless to whoever downloads the adapter.
_IGNORE = ["checkpoints/*", "best/*"]


def push_output_dir(folder: str | Path, repo_id: str, *, private: bool = False) -> str:
    """Create (or reuse) the model repo `repo_id` and upload the adapter, metrics and config; returns its URL.

    Authentication is huggingface_hub's: `HF_TOKEN` or a prior `hf auth login`.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), ignore_patterns=_IGNORE, commit_message="swapyard train"
    )
    return str(commit.commit_url) if hasattr(commit, "commit_url") else str(commit)
