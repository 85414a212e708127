"""The serving form of adapters: per-row adapters of any method in one batch (MultiAdapterModel)."""

from .layers import lora_split_width
from .model import LoadedAdapter, MultiAdapterModel
from .parsed import ParsedAdapter

__all__ = ["LoadedAdapter", "MultiAdapterModel", "ParsedAdapter", "lora_split_width"]
