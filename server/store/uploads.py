"""Uploaded adapters on disk: written atomically, one directory per version, a symlink per name.

Layout under the uploads root:

    versions/<name>@<hash12>/adapter_config.json      the files of one version (never modified once renamed)
    versions/<name>@<hash12>/adapter_model.safetensors
    <name> -> versions/<name>@<hash12>                the name's current version (a relative symlink)
    .tmp/                                             staging; anything left here after a crash is garbage

A version is staged in `.tmp`, every file and the directory are fsynced, then renamed into `versions/`;
the name's symlink is swapped with `os.replace` (atomic on POSIX). A crash at any point leaves either the
old version or the new one visible, never a half-written file.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from adapters_core.peft_names import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

from .keys import ResidentKey
from .sources import NAME_PATTERN

VERSIONS = "versions"
STAGING = ".tmp"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_upload(root: str, key: ResidentKey, config: bytes, weights: bytes) -> str:
    """Store one validated version `key` and point its name at it; returns the version directory."""
    name = key.name
    versions = os.path.join(root, VERSIONS)
    staging = os.path.join(root, STAGING)
    os.makedirs(versions, exist_ok=True)
    os.makedirs(staging, exist_ok=True)
    final = os.path.join(versions, key.model_name)
    if not os.path.isdir(final):  # the same bytes uploaded again reuse their directory
        tmp = tempfile.mkdtemp(prefix=f"{name}.", dir=staging)
        try:
            _write_file(os.path.join(tmp, CONFIG_NAME), config)
            _write_file(os.path.join(tmp, SAFETENSORS_WEIGHTS_NAME), weights)
            _fsync_dir(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(versions)
    link_tmp = os.path.join(staging, f"{name}.link.{os.getpid()}.{id(final)}")
    if os.path.lexists(link_tmp):
        os.unlink(link_tmp)
    os.symlink(os.path.join(VERSIONS, os.path.basename(final)), link_tmp)
    os.replace(link_tmp, os.path.join(root, name))
    _fsync_dir(root)
    return final


def remove_version(root: str, version_dir: str) -> None:
    """Delete one version directory (the name's symlink must no longer point at it)."""
    versions = os.path.realpath(os.path.join(root, VERSIONS))
    real = os.path.realpath(version_dir)
    if os.path.dirname(real) == versions and os.path.isdir(real):
        shutil.rmtree(real, ignore_errors=True)


def remove_upload(root: str, name: str) -> None:
    """Forget `name`: its symlink and every version directory of it."""
    link = os.path.join(root, name)
    if os.path.islink(link):
        os.unlink(link)
    versions = os.path.join(root, VERSIONS)
    if os.path.isdir(versions):
        for entry in os.listdir(versions):
            if entry.rpartition("@")[0] == name:  # a version directory is named `key.model_name`
                shutil.rmtree(os.path.join(versions, entry), ignore_errors=True)
    _fsync_dir(root)


def scan_uploads(root: str) -> dict[str, str]:
    """name -> current version directory, for every upload that survived a restart; clears staging garbage
    and versions that no name points at."""
    if not os.path.isdir(root):
        return {}
    shutil.rmtree(os.path.join(root, STAGING), ignore_errors=True)
    current: dict[str, str] = {}
    for entry in sorted(os.listdir(root)):
        link = os.path.join(root, entry)
        if NAME_PATTERN.fullmatch(entry) and os.path.islink(link):
            target = os.path.realpath(link)
            if os.path.isdir(target):
                current[entry] = target
    versions = os.path.join(root, VERSIONS)
    if os.path.isdir(versions):
        live = {os.path.basename(d) for d in current.values()}
        for entry in os.listdir(versions):
            if entry not in live:
                shutil.rmtree(os.path.join(versions, entry), ignore_errors=True)
    return current
