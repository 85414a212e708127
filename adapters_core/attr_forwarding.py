"""`ForwardingModule`: an `nn.Module` wrapper that answers missing attributes with its wrapped module's.

PEFT's wrappers (`PeftModel`, `BaseTuner`, its layers) forward what they do not have to what they wrap, and
user and model code relies on it (`peft_model.config`, `self.wo.weight.dtype` in T5 reaching a wrapped
layer). Every Swapyard wrapper does the same through this one base class.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn


class ForwardingModule(nn.Module):
    """Looks an attribute up on itself (parameters, buffers, submodules), then on `getattr(self, _forward_to)`."""

    _forward_to: ClassVar[str]  # the attribute holding the wrapped module

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = type(self)._forward_to  # a class attribute: reading it never re-enters __getattr__
            if name == inner:  # not set yet (early in __init__): no forwarding, no recursion
                raise
            return getattr(getattr(self, inner), name)
