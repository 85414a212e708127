"""bitsandbytes base layers (`Linear8bitLt`, `Linear4bit`): QLoRA-style bases under injected adapters.

Both are `nn.Linear` subclasses, so a tuner layer wraps them like any Linear and adds its term to their output.
Only code that reads or writes the base *weight* (DoRA's norm, merging) needs the weight in full precision:
`dequantized_weight` gives it, `write_quantized_weight` re-quantizes a merged one, both as PEFT does
(`peft.utils.integrations.dequantize_bnb_weight` and the bnb LoRA layers' merge). bitsandbytes is imported
only when such a layer exists.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn


def bnb_kind(module: nn.Module) -> Literal["4bit", "8bit"] | None:
    """'4bit' / '8bit' for a bitsandbytes-quantized layer (by its weight's parameter class), else None."""
    cls_name = type(getattr(module, "weight", None)).__name__
    if cls_name == "Params4bit":
        return "4bit"
    if cls_name == "Int8Params" and getattr(module, "state", None) is not None:
        return "8bit"
    return None


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The base weight in full precision, (out, in); a plain layer's weight as it is."""
    kind = bnb_kind(module)
    weight: Any = module.weight
    if kind is None:
        return weight
    import bitsandbytes as bnb

    if kind == "4bit":
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state)
    state: Any = module.state
    if state.SCB is None:
        state.SCB = weight.SCB
    return bnb.functional.int8_vectorwise_dequant(weight.data, state.SCB.to(weight.data.device))


def write_quantized_weight(module: nn.Module, new_weight: torch.Tensor) -> None:
    """Re-quantize `new_weight` (out, in) into the layer, keeping its quantization settings (PEFT's merge)."""
    import bitsandbytes as bnb

    weight: Any = module.weight
    if bnb_kind(module) == "4bit":
        kwargs = {k: v for k, v in weight.__dict__.items() if not k.startswith("_") and k != "data"}
        kwargs["bnb_quantized"] = False
        kwargs["requires_grad"] = False
        module.weight = bnb.nn.Params4bit(new_weight.to("cpu"), **kwargs).to(weight.device)
        return
    module.weight = bnb.nn.Int8Params(
        new_weight.to("cpu"), requires_grad=False, has_fp16_weights=weight.has_fp16_weights
    ).to(weight.device)
    module.state.reset_grads()  # type: ignore[union-attr,operator]
