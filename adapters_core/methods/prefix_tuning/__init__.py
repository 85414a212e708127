"""Prefix tuning (PEFT `PREFIX_TUNING`): trainable key/value prefixes in every attention layer."""

from .config import PrefixTuningConfig
from .encoder import PrefixEncoder
from .model import PrefixTuningModel

__all__ = ["PrefixEncoder", "PrefixTuningConfig", "PrefixTuningModel"]
