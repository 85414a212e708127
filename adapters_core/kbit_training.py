"""`prepare_model_for_kbit_training`: get a quantized transformers model ready for QLoRA-style training.

The same protocol as PEFT's function of that name, so that a ported QLoRA script behaves the same.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

# Quantization schemes whose parameters must not be cast (PEFT's list).
_NO_UPCAST_METHODS = ("gptq", "aqlm", "eetq", "hqq", "torchao")


def prepare_model_for_kbit_training(
    model: nn.Module,
    use_gradient_checkpointing: bool = True,
    gradient_checkpointing_kwargs: dict[str, Any] | None = None,
    auto_clear_cache: bool = True,
) -> nn.Module:
    """Freeze every base parameter, upcast fp16/bf16 parameters (not 4-bit packed ones) to fp32, and, for a
    k-bit model with `use_gradient_checkpointing`, make the input embeddings' output require grad and turn on
    transformers' gradient checkpointing. Returns `model` (modified in place), as PEFT does.
    """
    method = getattr(model, "quantization_method", None)
    method = getattr(method, "value", method)
    no_upcast = method in _NO_UPCAST_METHODS or getattr(model, "hqq_quantized", False)
    loaded_in_kbit = getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False)
    kwargs = dict(gradient_checkpointing_kwargs or {})

    for param in model.parameters():
        param.requires_grad = False
    if not no_upcast:
        for param in model.parameters():
            half = param.dtype in (torch.float16, torch.bfloat16)
            if half and type(param).__name__ != "Params4bit":
                param.data = param.data.to(torch.float32)
        if auto_clear_cache and torch.cuda.is_available():
            torch.cuda.empty_cache()

    if (loaded_in_kbit or no_upcast) and use_gradient_checkpointing:
        hf_model: Any = model  # a transformers PreTrainedModel (its methods are not typed on nn.Module)
        # Reentrant checkpointing needs an input that requires grad, or no gradient reaches the adapters.
        if kwargs.get("use_reentrant", True):
            if hasattr(hf_model, "enable_input_require_grads"):
                hf_model.enable_input_require_grads()
            else:
                hf_model.get_input_embeddings().register_forward_hook(
                    lambda _module, _input, output: output.requires_grad_(True)
                )
        enable: Any = hf_model.gradient_checkpointing_enable
        if "gradient_checkpointing_kwargs" in inspect.signature(enable).parameters:
            enable(gradient_checkpointing_kwargs=kwargs)
        else:
            enable()
    return model
