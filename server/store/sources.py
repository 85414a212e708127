"""Where an adapter's files come from, and the policy that says which places a request may name.

Three kinds of source:

- `local`: a directory. Operator-given paths (`--adapter NAME=PATH`, `--adapter-dir`) are trusted; paths from
  requests must be relative, free of `..`, and resolve (symlinks included) inside a configured adapter root —
  checked once when the source is made and again for every file when it is read, so a symlink swapped in
  later cannot escape either.
- `hub`: a Hugging Face Hub repo through huggingface_hub (its cache, revision pinning, offline mode), optionally
  restricted to an allow-list of owners.
- `upload`: a version directory the store itself wrote under its uploads root (uploads.py).

`fetch` reads a source's two files as bytes (the "fetch" stage); parsing them is parsing.py's job.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from safetensors.torch import save as safetensors_save

from adapters_core.errors import AdapterNotFoundError, UnsafeFormatError
from adapters_core.hub import resolve_file
from adapters_core.peft_names import CONFIG_NAME, PICKLE_WEIGHTS_NAME, SAFETENSORS_WEIGHTS_NAME
from adapters_core.weights_io import load_pickle_weights_only

from .errors import InvalidAdapterNameError, SourceNotAllowedError, UploadTooLargeError
from .templates import read_chat_template

SourceKind = Literal["local", "hub", "upload"]

# Names appear in URLs (/v1/adapters/{name}), in directory names under the uploads root and in resident keys
# (`name@hash`), so they get a conservative alphabet: no separators, no '@', no leading dot.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})/")


def check_name(name: str) -> str:
    """`name` if it is a valid adapter name, else `InvalidAdapterNameError`."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise InvalidAdapterNameError(
            f"adapter name {name!r} is invalid: use 1-128 characters from [A-Za-z0-9._-], starting with a "
            "letter or digit, without '..'."
        )
    return name


def is_hub_name(name: str) -> bool:
    """True for a Hub repo id `owner/name` (the name of an on-demand Hub adapter, on_demand.py)."""
    return isinstance(name, str) and bool(_HUB_ID.fullmatch(name)) and ".." not in name


def check_record_name(name: str, source: AdapterSource) -> str:
    """A catalog name: the adapter-name alphabet, or a Hub source's own repo id (on-demand Hub adapters are
    named by it; they never get an uploads folder, the one place a '/' would matter)."""
    if source.kind == "hub" and name == source.location and is_hub_name(name):
        return name
    return check_name(name)


@dataclass(frozen=True)
class AdapterSource:
    """One adapter's origin. `location` is an absolute directory (local, upload) or `owner/name` (hub);
    `root` is the adapter root a request-given local path must stay inside (None when operator-trusted);
    `label` is how an operator-given local directory is shown (its name as given, never the server path)."""

    kind: SourceKind
    location: str
    revision: str | None = None
    subfolder: str | None = None
    root: str | None = None
    label: str | None = None

    def describe(self) -> str:
        """The public description, shown on every route and in error messages: `hub:<owner/name>[@rev]`,
        `upload`, or `local:<path relative to its adapter root>` — never an absolute server path."""
        if self.kind == "hub":
            extra = (f"/{self.subfolder}" if self.subfolder else "") + (
                f"@{self.revision}" if self.revision else ""
            )
            return f"hub:{self.location}{extra}"
        if self.kind == "upload":
            return "upload"
        if self.root:
            return f"local:{os.path.relpath(self.location, self.root)}"
        return f"local:{self.label or os.path.basename(self.location)}"


@dataclass(frozen=True)
class FetchedFiles:
    """The raw files of one adapter, read by the fetch stage. `revision` is the resolved Hub commit."""

    config: bytes
    weights: bytes
    origin: str
    revision: str | None = None
    chat_template: str | None = None  # the adapter's own (templates.py); None: the base's applies


def _within(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


class SourcePolicy:
    """Which sources requests may name.

    Args:
        adapter_roots: directories that request-given local paths are resolved in (none: local loads by
            request are refused).
        allow_hub: whether Hub sources are allowed at all.
        hub_owners: if given, the only Hub owners (`owner/...`) allowed; None allows every owner.
    """

    def __init__(
        self,
        adapter_roots: tuple[str, ...] | list[str] = (),
        *,
        allow_hub: bool = True,
        hub_owners: tuple[str, ...] | list[str] | None = None,
    ) -> None:
        self.adapter_roots = tuple(os.path.realpath(r) for r in adapter_roots)
        self.allow_hub = allow_hub
        self.hub_owners = frozenset(hub_owners) if hub_owners is not None else None

    def local_trusted(self, path: str | os.PathLike[str], *, label: str | None = None) -> AdapterSource:
        """An operator-given directory (CLI flags, settings): any path, made absolute; shown as `label`
        (default: the directory's name as given)."""
        location = os.path.realpath(os.fspath(path))
        if not os.path.isdir(location):
            raise AdapterNotFoundError(f"{path}: no such adapter directory.")
        shown = label or os.path.basename(os.path.normpath(os.fspath(path))) or None
        return AdapterSource("local", location, label=shown)

    def local_from_request(self, path: str) -> AdapterSource:
        """A request-given path: relative, no `..`, resolving (symlinks too) inside an adapter root."""
        if not isinstance(path, str) or not path or "\x00" in path or "\\" in path:
            raise InvalidAdapterNameError(f"path {path!r} is not a relative adapter path.")
        if os.path.isabs(path) or path.startswith("~"):
            raise InvalidAdapterNameError(
                f"path {path!r}: absolute paths are refused; give a path relative to an adapter root."
            )
        if any(part == ".." for part in path.split("/")):
            raise InvalidAdapterNameError(f"path {path!r}: '..' is refused.")
        if not self.adapter_roots:
            raise SourceNotAllowedError("loading local adapters by request is off: no adapter roots are set.")
        for root in self.adapter_roots:
            candidate = os.path.realpath(os.path.join(root, path))
            if not os.path.exists(candidate):
                continue
            if not _within(candidate, root):
                raise SourceNotAllowedError(f"path {path!r} resolves outside its adapter root (a symlink?).")
            if os.path.isdir(candidate):
                return AdapterSource("local", candidate, root=root)
        raise AdapterNotFoundError(f"path {path!r}: no adapter directory of that name in the adapter roots.")

    def hub(
        self, repo_id: str, *, revision: str | None = None, subfolder: str | None = None
    ) -> AdapterSource:
        """A Hub repo `owner/name`, allowed by the owner list; `revision` pins a branch, tag or commit."""
        if not self.allow_hub:
            raise SourceNotAllowedError("Hub adapters are disabled on this server.")
        if not isinstance(repo_id, str) or not _HUB_ID.fullmatch(repo_id) or ".." in repo_id:
            raise InvalidAdapterNameError(f"{repo_id!r} is not a Hub repo id of the form 'owner/name'.")
        if subfolder is not None and (
            os.path.isabs(subfolder) or any(p in ("", "..") for p in subfolder.split("/"))
        ):
            raise InvalidAdapterNameError(f"subfolder {subfolder!r} must be a relative path without '..'.")
        owner = repo_id.split("/", 1)[0]
        if self.hub_owners is not None and owner not in self.hub_owners:
            raise SourceNotAllowedError(
                f"Hub owner {owner!r} is not on this server's allow-list {sorted(self.hub_owners)}."
            )
        return AdapterSource("hub", repo_id, revision=revision, subfolder=subfolder)


def _checked_path(path: str, max_bytes: int, root: str | None) -> str:
    """The real path of `path` once it is known to stay inside `root` (when given) and to be at most
    `max_bytes` long; `SourceNotAllowedError` / `UploadTooLargeError` otherwise."""
    real = os.path.realpath(path)
    if root is not None and not _within(real, root):
        raise SourceNotAllowedError(f"{os.path.basename(path)} links outside its adapter root; refused.")
    size = os.path.getsize(real)
    if size > max_bytes:
        raise UploadTooLargeError(
            f"{os.path.basename(path)} is {size} bytes, above this server's limit of {max_bytes} bytes "
            "(raise it with --max-adapter-bytes)."
        )
    return real


def _read(path: str, max_bytes: int, root: str | None) -> bytes:
    with open(_checked_path(path, max_bytes, root), "rb") as fh:
        return fh.read()


def _bin_as_safetensors(path: str, max_bytes: int, root: str | None) -> bytes:
    """`adapter_model.bin` read with torch.load(weights_only=True) (tensors only, no code runs), re-encoded as
    safetensors bytes: everything after the fetch stage sees one format."""
    state = load_pickle_weights_only(_checked_path(path, max_bytes, root))
    # clone: a .bin may hold views of one storage, which safetensors refuses to write
    return safetensors_save({key: tensor.detach().clone().contiguous() for key, tensor in state.items()})


def _refuse_pickle(where: str, has_pickle: bool) -> NoReturn:
    if has_pickle:
        raise UnsafeFormatError(
            f"{where}: only {PICKLE_WEIGHTS_NAME} (a pickle) was found; this server loads "
            f"{SAFETENSORS_WEIGHTS_NAME} only. Convert it with safetensors, or start the server with "
            "--allow-bin-weights to read it with torch.load(weights_only=True) (never for uploads)."
        )
    raise AdapterNotFoundError(f"{where}: no {SAFETENSORS_WEIGHTS_NAME}; is this a PEFT adapter?")


def fetch(
    source: AdapterSource,
    *,
    max_bytes: int,
    cache_dir: str | None = None,
    token: str | bool | None = None,
    allow_bin_weights: bool = False,
) -> FetchedFiles:
    """Read the config and safetensors bytes of `source` (blocking: run it in a worker thread).

    Pickle-only adapters raise `UnsafeFormatError`, unless `allow_bin_weights` and the source is local or the
    Hub (never an upload): then the .bin is read weights-only and re-encoded. Files above `max_bytes` raise
    `UploadTooLargeError`.
    """
    if source.kind in ("local", "upload"):
        directory = os.path.join(source.location, source.subfolder or "")
        config_path = os.path.join(directory, CONFIG_NAME)
        weights_path = os.path.join(directory, SAFETENSORS_WEIGHTS_NAME)
        if not os.path.isfile(config_path):
            raise AdapterNotFoundError(f"{source.describe()}: no {CONFIG_NAME}.")
        config = _read(config_path, max_bytes, source.root)
        if os.path.isfile(weights_path):
            weights = _read(weights_path, max_bytes, source.root)
        else:
            bin_path = os.path.join(directory, PICKLE_WEIGHTS_NAME)
            has_bin = os.path.isfile(bin_path)
            if not (has_bin and allow_bin_weights and source.kind == "local"):
                _refuse_pickle(source.describe(), has_bin)
            weights = _bin_as_safetensors(bin_path, max_bytes, source.root)

        def read_local(filename: str) -> bytes | None:
            path = os.path.join(directory, filename)
            return _read(path, max_bytes, source.root) if os.path.isfile(path) else None

        template = read_chat_template(read_local, source.describe())
        return FetchedFiles(config, weights, origin=source.describe(), chat_template=template)
    return _fetch_hub(
        source, max_bytes=max_bytes, cache_dir=cache_dir, token=token, allow_bin_weights=allow_bin_weights
    )


def _fetch_hub(
    source: AdapterSource,
    *,
    max_bytes: int,
    cache_dir: str | None,
    token: str | bool | None,
    allow_bin_weights: bool,
) -> FetchedFiles:
    hub: dict[str, Any] = dict(
        subfolder=source.subfolder, revision=source.revision, cache_dir=cache_dir, token=token
    )
    config_path = resolve_file(source.location, CONFIG_NAME, **hub)
    weights_path = resolve_file(source.location, SAFETENSORS_WEIGHTS_NAME, missing_ok=True, **hub)
    assert config_path is not None
    if weights_path is not None:
        weights = _read(weights_path, max_bytes, None)
    else:
        weights_path = resolve_file(source.location, PICKLE_WEIGHTS_NAME, missing_ok=True, **hub)
        if weights_path is None or not allow_bin_weights:
            _refuse_pickle(source.describe(), weights_path is not None)
        assert weights_path is not None
        weights = _bin_as_safetensors(weights_path, max_bytes, None)
    # hf_hub_download returns .../snapshots/<commit>/...: record the commit the revision resolved to.
    commit = _SNAPSHOT.search(weights_path.replace(os.sep, "/"))
    revision = commit.group(1) if commit else source.revision

    def read_hub(filename: str) -> bytes | None:
        path = resolve_file(source.location, filename, missing_ok=True, **{**hub, "revision": revision})
        return None if path is None else _read(path, max_bytes, None)

    return FetchedFiles(
        _read(config_path, max_bytes, None),
        weights,
        origin=source.describe(),
        revision=revision,
        chat_template=read_chat_template(read_hub, source.describe()),
    )


def hub_cached(source: AdapterSource, cache_dir: str | None) -> bool:
    """True when the Hub adapter's weights are already in the huggingface_hub cache (the disk tier)."""
    from huggingface_hub import try_to_load_from_cache

    filename = (
        f"{source.subfolder}/{SAFETENSORS_WEIGHTS_NAME}" if source.subfolder else SAFETENSORS_WEIGHTS_NAME
    )
    found = try_to_load_from_cache(source.location, filename, cache_dir=cache_dir, revision=source.revision)
    return isinstance(found, str)
