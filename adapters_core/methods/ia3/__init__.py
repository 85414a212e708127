"""IA³: config, layers, tuner."""

from .config import IA3Config
from .model import IA3Tuner

__all__ = ["IA3Config", "IA3Tuner"]
