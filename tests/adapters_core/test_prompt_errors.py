"""Clear errors for prompt-learning methods and LLaMA-Adapter: each names the problem and the fix."""

from __future__ import annotations

import peft
import pytest
import torch
from tiny_models import BUILDERS
from transformers import DistilBertConfig, DistilBertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from adapters_core.errors import AdapterConfigError, AdapterLoadError, AdapterShapeError, UnsupportedError
from adapters_core.methods.adaption_prompt import AdaptionPromptConfig, AdaptionPromptModel
from adapters_core.methods.p_tuning import PromptEncoderConfig, PromptEncoderModel
from adapters_core.methods.prefix_tuning import PrefixTuningConfig, PrefixTuningModel
from adapters_core.methods.prompt_tuning import PromptTuningConfig, PromptTuningModel


def test_prefix_tuning_needs_a_kv_cache() -> None:
    torch.manual_seed(0)
    distil = DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4, hidden_dim=128)
    )
    with pytest.raises(
        UnsupportedError, match=r"needs a model with a KV cache.*Use prompt tuning or P-tuning"
    ):
        PrefixTuningModel(distil, PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4))


def test_prompt_table_wider_than_the_base_is_refused() -> None:
    # A config (as saved with an adapter) for a 64-wide model, on a 32-wide Llama.
    narrow = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=256,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    config = PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=4,
        token_dim=64,
        num_layers=2,
        num_attention_heads=4,
        inference_mode=True,
    )
    with pytest.raises(
        AdapterShapeError, match=r"token_dim=64 in the config.*needs token_dim=32.*trained for another"
    ):
        PromptTuningModel(narrow, config)


def test_prompt_table_of_the_wrong_shape_in_the_file_is_refused() -> None:
    tuner = PromptTuningModel(
        BUILDERS["llama"](),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, inference_mode=True),
    )
    with pytest.raises(
        AdapterShapeError, match=r"prompt_embeddings has shape \(4, 32\).*need \(4, 64\).*does not fit"
    ):
        tuner.load_state_dict_from_file("default", {"prompt_embeddings": torch.zeros(4, 32)})
    prefix = PrefixTuningModel(
        BUILDERS["gpt2"](),
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, inference_mode=True),
    )
    with pytest.raises(AdapterShapeError, match=r"need \(4, 256\)"):
        prefix.load_state_dict_from_file("default", {"prompt_embeddings": torch.zeros(4, 128)})


def test_text_init_without_a_tokenizer_is_refused() -> None:
    with pytest.raises(AdapterConfigError, match=r"needs a tokenizer: set tokenizer_name_or_path"):
        PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=4,
            prompt_tuning_init="TEXT",
            prompt_tuning_init_text="classify this",
        )
    with pytest.raises(AdapterConfigError, match=r"needs prompt_tuning_init_text"):
        PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=4,
            prompt_tuning_init="TEXT",
            tokenizer_name_or_path="some/tokenizer",
        )


@pytest.mark.parametrize("base", ["bert", "t5"])
def test_llama_adapter_on_an_unsupported_architecture(base: str) -> None:
    with pytest.raises(
        UnsupportedError, match=r"supports model types \['gpt2', 'llama', 'mistral'\].*Use LoRA"
    ):
        AdaptionPromptModel(BUILDERS[base](), AdaptionPromptConfig(adapter_len=4, adapter_layers=1))
    with pytest.raises(ValueError, match="Unsupported model type"):  # PEFT refuses them too
        peft.get_peft_model(BUILDERS[base](), peft.AdaptionPromptConfig(adapter_len=4, adapter_layers=1))


def test_llama_adapter_with_more_layers_than_the_model() -> None:
    with pytest.raises(AdapterConfigError, match=r"adapter_layers=3.*only 2 modules named 'self_attn'"):
        AdaptionPromptModel(BUILDERS["llama"](), AdaptionPromptConfig(adapter_len=4, adapter_layers=3))


def test_prompt_learning_needs_a_task_type() -> None:
    with pytest.raises(AdapterConfigError, match=r"needs a task_type"):
        PromptTuningModel(BUILDERS["llama"](), PromptTuningConfig(num_virtual_tokens=4))


def test_saved_table_cannot_be_loaded_into_a_trainable_encoder() -> None:
    tuner = PromptEncoderModel(
        BUILDERS["llama"](), PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    with pytest.raises(
        AdapterLoadError, match=r"cannot be loaded into a trainable PromptEncoder.*is_trainable=False"
    ):
        tuner.load_state_dict_from_file("default", {"prompt_embeddings": torch.zeros(4, 64)})
