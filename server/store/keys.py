"""`ResidentKey`: one version of one adapter, as the store, its tiers and its leases know it.

A name is what clients say; a version is the name's content at one moment (re-uploading or reloading a name
makes a new version, and a running request keeps the version it acquired). The key is the pair, typed, so
that nothing splits a string apart again to find the name; the model, which knows adapters by string, gets
`key.model_name`.
"""

from __future__ import annotations

from dataclasses import dataclass

HASH_CHARS = 12  # of the sha256 hex digest in `model_name`: enough to tell versions of one name apart


@dataclass(frozen=True)
class ResidentKey:
    """`name`: the adapter's public name; `content_hash`: the sha256 of its config and tensors."""

    name: str
    content_hash: str

    @property
    def model_name(self) -> str:
        """The adapter's name inside the `MultiAdapterModel` (`name@hash12`): content-addressed, so new
        weights of a name never alias old ones. Also the name of an upload's version directory."""
        return f"{self.name}@{self.content_hash[:HASH_CHARS]}"

    def __str__(self) -> str:
        return self.model_name
