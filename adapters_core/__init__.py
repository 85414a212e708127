"""What an adapter is: PEFT-compatible configs, load/save, injection, merge, and the multi-adapter model.

A PEFT user ports a script by changing its import: `from peft import LoraConfig, get_peft_model, PeftModel`
becomes `from adapters_core import ...`. PEFT's names (peft_api.py) are the same objects as ours
(`PeftModel is AdapterModel`, `get_peft_model is get_adapter_model`, ...).
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
from .peft_api import (
    AutoPeftModel,
    AutoPeftModelForCausalLM,
    AutoPeftModelForFeatureExtraction,
    AutoPeftModelForQuestionAnswering,
    AutoPeftModelForSeq2SeqLM,
    AutoPeftModelForSequenceClassification,
    AutoPeftModelForTokenClassification,
    PeftConfig,
    PeftModel,
    PeftModelForCausalLM,
    PeftModelForFeatureExtraction,
    PeftModelForQuestionAnswering,
    PeftModelForSeq2SeqLM,
    PeftModelForSequenceClassification,
    PeftModelForTokenClassification,
    get_peft_config,
    get_peft_model,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from .prompt_learning import PromptLearningConfig

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
    "AutoPeftModel",
    "AutoPeftModelForCausalLM",
    "AutoPeftModelForFeatureExtraction",
    "AutoPeftModelForQuestionAnswering",
    "AutoPeftModelForSeq2SeqLM",
    "AutoPeftModelForSequenceClassification",
    "AutoPeftModelForTokenClassification",
    "IA3Config",
    "LoadedAdapter",
    "LoraConfig",
    "MultiAdapterModel",
    "NoTargetModulesError",
    "PeftConfig",
    "PeftModel",
    "PeftModelForCausalLM",
    "PeftModelForFeatureExtraction",
    "PeftModelForQuestionAnswering",
    "PeftModelForSeq2SeqLM",
    "PeftModelForSequenceClassification",
    "PeftModelForTokenClassification",
    "PeftType",
    "PrefixTuningConfig",
    "PromptEncoderConfig",
    "PromptEncoderReparameterizationType",
    "PromptLearningConfig",
    "PromptTuningConfig",
    "PromptTuningInit",
    "TaskType",
    "UnsafeFormatError",
    "UnsupportedError",
    "get_adapter_model",
    "get_peft_config",
    "get_peft_model",
    "get_peft_model_state_dict",
    "inject_adapter_in_model",
    "prepare_model_for_kbit_training",
    "set_peft_model_state_dict",
]
