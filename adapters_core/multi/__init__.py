"""The serving form of adapters: per-row adapters of any method in one batch (MultiAdapterModel)."""

from .model import LoadedAdapter, MultiAdapterModel

__all__ = ["LoadedAdapter", "MultiAdapterModel"]
