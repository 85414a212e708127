"""Read and write adapter weight files in PEFT's layout (reference §1).

safetensors is the format. `adapter_model.bin` (PEFT's default until late 2023) is read as PEFT reads it, with
`torch.load(weights_only=True)` only: tensors and plain containers, never arbitrary objects, so a pickle that
would run code is refused without being executed. Callers that take no pickle at all (the server) pass
`allow_pickle=False`.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import AdapterNotFoundError, AdapterWeightsError, UnsafeFormatError
from .hub import resolve_file
from .peft_names import PICKLE_WEIGHTS_NAME, SAFETENSORS_METADATA, SAFETENSORS_WEIGHTS_NAME


def load_adapter_weights(
    path_or_hub_id: str,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    token: str | bool | None = None,
    allow_pickle: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """The state dict of an adapter, keys exactly as PEFT saved them.

    `adapter_model.safetensors` is preferred; without it `adapter_model.bin` is read weights-only, unless
    `allow_pickle=False`, which raises `UnsafeFormatError` instead. Raises `AdapterWeightsError` for an
    unreadable file, a pickle holding anything but tensors, or non-finite values.
    """
    kw: dict[str, Any] = dict(subfolder=subfolder, revision=revision, cache_dir=cache_dir, token=token)
    path = resolve_file(path_or_hub_id, SAFETENSORS_WEIGHTS_NAME, missing_ok=True, **kw)
    if path is not None:
        try:
            state = load_file(path, device=str(device))
        except (SafetensorError, OSError, ValueError) as exc:
            raise AdapterWeightsError(
                f"{path}: corrupt or unreadable safetensors file ({exc}); re-save or re-download the adapter."
            ) from exc
    else:
        pickle_path = resolve_file(path_or_hub_id, PICKLE_WEIGHTS_NAME, missing_ok=True, **kw)
        if pickle_path is None:
            where = os.path.join(path_or_hub_id, subfolder) if subfolder else path_or_hub_id
            raise AdapterNotFoundError(
                f"{where}: no {SAFETENSORS_WEIGHTS_NAME} (nor {PICKLE_WEIGHTS_NAME}); is this an adapter?"
            )
        if not allow_pickle:
            raise UnsafeFormatError(
                f"{pickle_path}: only a pickle file ({PICKLE_WEIGHTS_NAME}) was found, and this caller takes "
                f"safetensors only. Convert it to {SAFETENSORS_WEIGHTS_NAME}, or pass allow_pickle=True (it is "
                "then read with torch.load(weights_only=True), as PEFT reads it)."
            )
        state = load_pickle_weights_only(pickle_path, device)
    check_finite(state, source=str(path_or_hub_id))
    return state


def load_pickle_weights_only(path: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """`torch.load(weights_only=True)`: the unpickler only builds tensors and plain containers, so an
    object with a `__reduce__` (code to run) is rejected before anything of it executes."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise AdapterWeightsError(
            f"{path}: cannot be read with weights_only=True: the pickle holds objects other than tensors, which "
            "could run code when unpickled, so it was refused without being executed. Re-save the adapter "
            f"from its state dict as {SAFETENSORS_WEIGHTS_NAME} (PEFT's save_pretrained does)."
        ) from exc
    except Exception as exc:  # torch raises many types for damaged archives
        raise AdapterWeightsError(
            f"{path}: cannot be read with weights_only=True ({exc}); re-save or re-download the adapter."
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AdapterWeightsError(
            f"{path}: expected a dict of tensors (a state dict), got {type(state).__name__}."
        )
    return state


def check_finite(state: dict[str, torch.Tensor], *, source: str) -> None:
    """Raise `AdapterWeightsError` naming the first tensor with NaN or Inf values."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise AdapterWeightsError(
                f"{source}: tensor {key!r} contains NaN or Inf values; the adapter diverged in training "
                "or the file is damaged. Re-train or re-export it."
            )


def save_adapter_weights(state: dict[str, torch.Tensor], save_directory: str | os.PathLike[str]) -> str:
    """Write `adapter_model.safetensors` (contiguous, un-aliased tensors, metadata {"format": "pt"})."""
    os.makedirs(save_directory, exist_ok=True)
    path = os.path.join(save_directory, SAFETENSORS_WEIGHTS_NAME)
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    save_file(plain, path, metadata=dict(SAFETENSORS_METADATA))
    return path
