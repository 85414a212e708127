"""What an adapter is: PEFT-compatible configs, load/save, injection, merge, and the multi-adapter model.

A PEFT user ports a script by changing its import: `from peft import LoraConfig` becomes
`from adapters_core import LoraConfig`.
"""

from .adapter_model import (
    AdapterModel,
    AdapterModelForCausalLM,
    AdapterModelForFeatureExtraction,
    AdapterModelForQuestionAnswering,
    AdapterModelForSeq2SeqLM,
    AdapterModelForSequenceClassification,
    AdapterModelForTokenClassification,
    get_adapter_model,
)
from .auto import (
    AutoAdapterModel,
    AutoAdapterModelForCausalLM,
    AutoAdapterModelForFeatureExtraction,
    AutoAdapterModelForQuestionAnswering,
    AutoAdapterModelForSeq2SeqLM,
    AutoAdapterModelForSequenceClassification,
    AutoAdapterModelForTokenClassification,
)
from .config import AdapterConfig, PeftType, TaskType
from .errors import (
    AdapterConfigError,
    AdapterError,
    AdapterLoadError,
    AdapterNotFoundError,
    AdapterShapeError,
    AdapterWeightsError,
    NoTargetModulesError,
    UnsafeFormatError,
    UnsupportedError,
)
from .kbit_training import prepare_model_for_kbit_training
from .methods.adalora import AdaLoraConfig
from .methods.adaption_prompt import AdaptionPromptConfig
from .methods.ia3 import IA3Config
from .methods.lora import LoraConfig
from .methods.p_tuning import PromptEncoderConfig, PromptEncoderReparameterizationType
from .methods.prefix_tuning import PrefixTuningConfig
from .methods.prompt_tuning import PromptTuningConfig, PromptTuningInit
from .multi import LoadedAdapter, MultiAdapterModel

__all__ = [
    "AdaLoraConfig",
    "AdapterConfig",
    "AdapterConfigError",
    "AdapterError",
    "AdapterLoadError",
    "AdapterModel",
    "AdapterModelForCausalLM",
    "AdapterModelForFeatureExtraction",
    "AdapterModelForQuestionAnswering",
    "AdapterModelForSeq2SeqLM",
    "AdapterModelForSequenceClassification",
    "AdapterModelForTokenClassification",
    "AdapterNotFoundError",
    "AdapterShapeError",
    "AdapterWeightsError",
    "AdaptionPromptConfig",
    "AutoAdapterModel",
    "AutoAdapterModelForCausalLM",
    "AutoAdapterModelForFeatureExtraction",
    "AutoAdapterModelForQuestionAnswering",
    "AutoAdapterModelForSeq2SeqLM",
    "AutoAdapterModelForSequenceClassification",
    "AutoAdapterModelForTokenClassification",
    "IA3Config",
    "LoadedAdapter",
    "LoraConfig",
    "MultiAdapterModel",
    "NoTargetModulesError",
    "PeftType",
    "PrefixTuningConfig",
    "PromptEncoderConfig",
    "PromptEncoderReparameterizationType",
    "PromptTuningConfig",
    "PromptTuningInit",
    "TaskType",
    "UnsafeFormatError",
    "UnsupportedError",
    "get_adapter_model",
    "prepare_model_for_kbit_training",
]
