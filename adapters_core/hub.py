"""Find adapter files: a local directory, or a Hugging Face Hub repo through huggingface_hub.

huggingface_hub does the downloading, caching (the HF cache), revision pinning and offline mode; this
module only decides between local and Hub and turns its exceptions into `AdapterNotFoundError`.
"""

from __future__ import annotations

import os

from .errors import AdapterNotFoundError


def _offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read it per call so tests and servers can flip it.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def local_dir(path_or_hub_id: str, subfolder: str | None = None) -> str | None:
    """The local directory for `path_or_hub_id` (+ `subfolder`), or None if it is not a local directory."""
    path = os.path.join(path_or_hub_id, subfolder) if subfolder else path_or_hub_id
    return path if os.path.isdir(path) else None


def resolve_file(
    path_or_hub_id: str,
    filename: str,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    token: str | bool | None = None,
    missing_ok: bool = False,
) -> str | None:
    """Local path of `filename` in a directory or Hub repo; downloads (or reads the HF cache) when remote.

    Returns None when `missing_ok` and the file does not exist; otherwise raises `AdapterNotFoundError`.
    With `HF_HUB_OFFLINE=1` only the HF cache is consulted.
    """
    directory = local_dir(path_or_hub_id, subfolder)
    if directory is not None:
        path = os.path.join(directory, filename)
        if os.path.isfile(path):
            return path
        if missing_ok:
            return None
        raise AdapterNotFoundError(f"{directory}: no {filename}; is this a PEFT adapter directory?")
    if (
        os.path.isabs(path_or_hub_id)
        or path_or_hub_id.startswith((".", "~"))
        or path_or_hub_id.count("/") > 1
    ):
        raise AdapterNotFoundError(
            f"{path_or_hub_id!r} is neither an existing local directory nor a Hub repo id ('owner/name')."
        )

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return hf_hub_download(
            repo_id=path_or_hub_id,
            filename=filename,
            subfolder=subfolder,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=_offline(),
        )
    except (EntryNotFoundError, LocalEntryNotFoundError) as exc:
        if missing_ok:
            return None
        where = (
            f"{path_or_hub_id}"
            + (f"/{subfolder}" if subfolder else "")
            + (f"@{revision}" if revision else "")
        )
        hint = " (HF_HUB_OFFLINE is set: only the HF cache was searched)" if _offline() else ""
        raise AdapterNotFoundError(f"Hub repo {where}: no {filename}{hint}.") from exc
    except (RepositoryNotFoundError, RevisionNotFoundError, HFValidationError) as exc:
        raise AdapterNotFoundError(
            f"Hub repo {path_or_hub_id!r} (revision {revision or 'main'}) not found: {exc}"
        ) from exc
