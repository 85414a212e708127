"""The "parse" stage: raw files → a validated `HostAdapter`, or a clear error, before anything is visible.

Every source (local, Hub, upload) goes through the same checks in the same order: the config parses; the
weights are safetensors (pickle is recognised and refused by its magic bytes, whatever the file is called);
every float is finite; the adapter fits the base model (the `Validator` callback, MultiAdapterModel's own
parser: every config number sane, the file's modules exactly the targeted ones, shapes, supported method,
and a probe forward whose outputs must be finite); the rank is within the server's maximum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from adapters_core.config import AdapterConfig, parse_json
from adapters_core.errors import AdapterConfigError, AdapterWeightsError, UnsafeFormatError
from adapters_core.multi.model import MultiAdapterModel
from adapters_core.multi.parsed import ParsedAdapter
from adapters_core.weights_io import check_finite

from .errors import RankTooLargeError
from .keys import ResidentKey
from .sources import FetchedFiles

Validator = Callable[[AdapterConfig, dict[str, torch.Tensor]], ParsedAdapter]

# torch.save writes a zip archive; plain pickles start with the PROTO opcode (0x80) and a protocol 2..5.
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


@dataclass
class HostAdapter:
    """A validated adapter held in host memory: the `ParsedAdapter` that `MultiAdapterModel.add` takes as it
    is (parsed once, by validation), and what the store shows of it.

    nbytes: bytes of the parsed tensors (`ParsedAdapter.nbytes`), what the host tier budgets.
    """

    name: str
    parsed: ParsedAdapter
    revision: str | None = None
    chat_template: str | None = None  # the adapter's own (templates.py), else None: the base's applies

    @property
    def key(self) -> ResidentKey:
        return ResidentKey(self.name, self.parsed.content_hash)

    @property
    def content_hash(self) -> str:
        return self.parsed.content_hash

    @property
    def nbytes(self) -> int:
        return self.parsed.nbytes

    @property
    def method(self) -> str:
        return self.parsed.peft_type

    @property
    def task_type(self) -> str | None:
        task_type = self.parsed.config.task_type
        return getattr(task_type, "value", task_type)

    @property
    def rank(self) -> int | None:
        """The LoRA-family rank; None for IA3 and prompt methods."""
        return self.parsed.max_rank or None

    @property
    def probe_max_delta(self) -> float | None:
        """The validation probe's max |adapted − base| (multi/probe.py)."""
        return self.parsed.probe.max_delta


def model_validator(model: MultiAdapterModel) -> Validator:
    """The validator of a MultiAdapterModel: its `parse`, whose result `model.add` takes without parsing again."""
    return model.parse


def parse_config(data: bytes, origin: str) -> AdapterConfig:
    """An `adapter_config.json` from bytes; anything unparsable (bad UTF-8 or JSON, hostile nesting, a
    value of the wrong type) is an `AdapterConfigError`."""
    source = f"{origin}: adapter_config.json"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AdapterConfigError(f"{source} is not valid UTF-8 ({exc}).") from exc
    return AdapterConfig.from_dict(parse_json(text, source=source), source=source)


def parse_weights(data: bytes, origin: str) -> dict[str, torch.Tensor]:
    """A safetensors state dict from bytes, every float finite; pickles are refused, never unpickled."""
    if data.startswith(_PICKLE_MAGIC):
        raise UnsafeFormatError(
            f"{origin}: the weights are a pickle / torch.save file, which can run code; upload "
            "adapter_model.safetensors instead."
        )
    try:
        state = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise AdapterWeightsError(
            f"{origin}: adapter_model.safetensors is corrupt or truncated ({exc}); re-save it."
        ) from exc
    if not state:
        raise AdapterWeightsError(f"{origin}: adapter_model.safetensors holds no tensors.")
    check_finite(state, source=origin)
    return state


def build_host_adapter(name: str, files: FetchedFiles, validate: Validator, *, max_rank: int) -> HostAdapter:
    """Parse and validate `files` completely (blocking: run it in a worker thread)."""
    config = parse_config(files.config, files.origin)
    state = parse_weights(files.weights, files.origin)
    parsed = validate(config, state)
    if parsed.max_rank > max_rank:
        raise RankTooLargeError(
            f"{files.origin}: LoRA rank {parsed.max_rank} is above this server's maximum of {max_rank}; "
            "serve a lower-rank adapter or raise --max-adapter-rank."
        )
    return HostAdapter(name=name, parsed=parsed, revision=files.revision, chat_template=files.chat_template)
