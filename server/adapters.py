"""`AdapterRegistry`: which adapters this server holds, loaded at startup from `--adapter` / `--adapter-dir`.

The registry is the only code that calls `MultiAdapterModel.add/remove` and the only place routes ask
"does this adapter exist, and what is it?". The adapter store (tiers, leases, upload) replaces it behind the
same methods: `require`, `infos`, `labels`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters_core.multi import LoadedAdapter, MultiAdapterModel

from .errors import ConflictError, UnknownAdapterError

log = logging.getLogger("swapyard.adapters")
LABEL_MAP_FILE = "label_map.json"  # written by `swapyard train` for classification adapters
HEAD_MODULES = ("classifier", "score")


@dataclass
class AdapterInfo:
    """What /v1/models and /classify need to know about one loaded adapter."""

    name: str
    source: str
    peft_type: str
    task_type: str | None
    rank: int | None
    id2label: dict[int, str] | None
    resident: str
    created: int


def _enum_text(value: Any) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


def _rank(loaded: LoadedAdapter) -> int | None:
    ranks = [t.rank for t in loaded.parsed.lora.values()]
    return max(ranks) if ranks else None


def _head_size(loaded: LoadedAdapter) -> int | None:
    """Rows of the adapter's own classification head (a modules_to_save override), if it has one."""
    for path, params in loaded.parsed.overrides.items():
        if path.split(".")[-1] in HEAD_MODULES or any(f".{h}." in f".{path}." for h in HEAD_MODULES):
            weight = params.get("weight")
            if weight is not None and weight.dim() == 2:
                return int(weight.shape[0])
    return None


def _label_map(source: str) -> dict[int, str] | None:
    path = Path(source) / LABEL_MAP_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return {int(k): str(v) for k, v in data.get("id2label", {}).items()}


class AdapterRegistry:
    """Name -> loaded adapter, over one MultiAdapterModel."""

    def __init__(
        self, model: MultiAdapterModel, *, base_name: str, base_id2label: dict[int, str], resident: str
    ):
        self.model = model
        self.base_name = base_name
        self.base_id2label = base_id2label
        self.resident = resident
        self._infos: dict[str, AdapterInfo] = {}

    def load(self, name: str, source: str, **kwargs: Any) -> AdapterInfo:
        """Load `source` (a directory or Hub id) under `name`."""
        if name == self.base_name:
            raise ConflictError(f"adapter name {name!r} is the base model's name; choose another name")
        if name in self._infos:
            raise ConflictError(f"an adapter named {name!r} is already loaded")
        loaded = self.model.add(name, source, **kwargs)
        id2label = _label_map(source)
        if id2label is None:
            size = _head_size(loaded)
            if size is not None:
                # A PEFT SEQ_CLS adapter carries its head but not its labels: the base's names fit only
                # when the sizes agree; otherwise transformers' default names.
                base = self.base_id2label
                id2label = base if len(base) == size else {i: f"LABEL_{i}" for i in range(size)}
        info = AdapterInfo(
            name=name,
            source=str(source),
            peft_type=_enum_text(loaded.config.peft_type) or "UNKNOWN",
            task_type=_enum_text(getattr(loaded.config, "task_type", None)),
            rank=_rank(loaded),
            id2label=id2label,
            resident=self.resident,
            created=int(time.time()),
        )
        self._infos[name] = info
        log.info("loaded adapter %s (%s, rank %s) from %s", name, info.peft_type, info.rank, source)
        return info

    def load_dir(self, directory: str) -> list[AdapterInfo]:
        """Every sub-directory of `directory` with an adapter_config.json, named after the sub-directory."""
        root = Path(directory)
        if not root.is_dir():
            raise FileNotFoundError(f"--adapter-dir {directory} is not a directory")
        return [
            self.load(sub.name, str(sub))
            for sub in sorted(root.iterdir())
            if sub.is_dir() and (sub / "adapter_config.json").is_file()
        ]

    def require(self, name: str | None) -> AdapterInfo | None:
        """The adapter's info; None for the base model. Unknown names are a 404, never the base model."""
        if name is None:
            return None
        info = self._infos.get(name)
        if info is None:
            known = ", ".join(sorted(self._infos)) or "none"
            raise UnknownAdapterError(f"adapter {name!r} is not loaded (loaded adapters: {known})")
        return info

    def resolve_model(self, model: str) -> str | None:
        """OpenAI `model` -> adapter name (None for the base model's own name)."""
        if model == self.base_name:
            return None
        self.require(model)
        return model

    def labels(self, name: str | None, size: int) -> list[str]:
        """Label names of a head with `size` outputs under adapter `name` (None = base head)."""
        id2label = self.base_id2label if name is None else (self.require(name).id2label or {})  # type: ignore[union-attr]
        return [id2label.get(i, f"LABEL_{i}") for i in range(size)]

    def infos(self) -> list[AdapterInfo]:
        return [self._infos[n] for n in sorted(self._infos)]
