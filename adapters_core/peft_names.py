"""PEFT's file names, key prefixes and key suffixes: the one module that spells them.

See ../shared/reference/peft-format.md §1 and §3.
"""

from __future__ import annotations

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"
SAFETENSORS_METADATA = {"format": "pt"}

# Injected tuners (LoRA, AdaLoRA, IA3, LLaMA-Adapter) and their modules_to_save / biases.
INJECTED_PREFIX = "base_model.model."
# Prompt-learning methods: modules_to_save keys carry only this prefix.
PROMPT_PREFIX = "base_model."
PROMPT_EMBEDDINGS_KEY = "prompt_embeddings"
# A tensor of a module wrapped by a tuner layer carries this infix in saved keys (bias="all", embeddings).
BASE_LAYER_INFIX = ".base_layer."

DEFAULT_ADAPTER_NAME = "default"
