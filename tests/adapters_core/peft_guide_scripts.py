"""PEFT's quicktour and the API calls of its task guides, as script bodies that take the library as `lib`.

Each function is run twice by test_peft_port_quicktour.py: once with `lib = peft`, once with
`lib = adapters_core`. The text is the same, so whatever passes proves that porting needs only the import.
The guides' Hub models are tiny local checkpoints (`env.bases`), their datasets one fixed batch, their training
loops one optimizer step (from LoRA B = 0, the step is what makes the adapter change the output).

Sources: PEFT's README quickstart and quicktour (LoRA, seq2seq), and the task guides "Causal language
modeling" (LoRA), "Prompt tuning for causal language modeling" (bloomz), "P-tuning for sequence
classification", "Prefix tuning for conditional generation", "IA3 for seq2seq", "LoRA for token classification".
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)


@dataclass
class Env:
    bases: dict[str, str]  # "llama" | "t5" | "bert_seq_cls" | "bert_token_cls" -> saved checkpoint directory
    tokenizer: str  # a saved tokenizer directory (prompt tuning's TEXT init)
    out: str  # where the script saves its adapter
    batches: dict[str, dict[str, torch.Tensor]]  # per base: the batch, with labels


def train_one_step(model: Any, batch: dict[str, torch.Tensor]) -> float:
    """The guides' loop, one step: forward with labels, backward, AdamW step (dropout seeded)."""
    model.train()
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    outputs = model(**batch)
    loss = outputs.loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return float(loss)


def saved_files(directory: str) -> dict[str, Any]:
    """What save_pretrained wrote: file names, adapter_config.json, the tensors."""
    with open(os.path.join(directory, "adapter_config.json"), encoding="utf-8") as fh:
        config = json.load(fh)
    return {
        "files": sorted(os.listdir(directory)),
        "config": config,
        "weights": load_file(os.path.join(directory, "adapter_model.safetensors")),
    }


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


# -- the scripts ------------------------------------------------------------------------------------------


def quicktour_seq2seq_lora(lib: Any, env: Env) -> dict[str, Any]:
    """README quickstart / quicktour: LoRA on a seq2seq model, save, reload by PeftConfig + PeftModel."""
    model = AutoModelForSeq2SeqLM.from_pretrained(env.bases["t5"])
    peft_config = lib.LoraConfig(
        task_type=lib.TaskType.SEQ_2_SEQ_LM, inference_mode=False, r=8, lora_alpha=32, lora_dropout=0.1
    )
    model = lib.get_peft_model(model, peft_config)
    model.print_trainable_parameters()
    loss = train_one_step(model, env.batches["t5"])
    model.save_pretrained(env.out)

    config = lib.PeftConfig.from_pretrained(env.out)
    model = AutoModelForSeq2SeqLM.from_pretrained(config.base_model_name_or_path)
    model = lib.PeftModel.from_pretrained(model, env.out)
    model.eval()
    batch = env.batches["t5"]
    with torch.no_grad():
        logits = model(**batch).logits
    generated = model.generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=10
    )
    auto = lib.AutoPeftModelForSeq2SeqLM.from_pretrained(env.out)
    with torch.no_grad():
        auto_logits = auto(**batch).logits
    return {
        "loss": loss,
        "logits": logits,
        "generated": generated,
        "auto_logits": auto_logits,
        "is_peft_model": isinstance(model, lib.PeftModel) and isinstance(auto, lib.PeftModel),
        **saved_files(env.out),
    }


def causal_lm_lora(lib: Any, env: Env) -> dict[str, Any]:
    """Causal language modeling guide: LoRA on q/v, train, save, AutoPeftModelForCausalLM, generate."""
    model = AutoModelForCausalLM.from_pretrained(env.bases["llama"])
    config = lib.LoraConfig(
        r=16,
        lora_alpha=32,
        target_modules=["q_proj", "v_proj"],
        lora_dropout=0.05,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = lib.get_peft_model(model, config)
    model.print_trainable_parameters()
    loss = train_one_step(model, env.batches["llama"])
    model.save_pretrained(env.out)

    model = lib.AutoPeftModelForCausalLM.from_pretrained(env.out)
    model.eval()
    batch = _inputs(env.batches["llama"])
    with torch.no_grad():
        logits = model(**batch).logits
    generated = model.generate(**batch, max_new_tokens=10, do_sample=False)
    merged = model.merge_and_unload()
    with torch.no_grad():
        merged_logits = merged(**batch).logits
    return {
        "loss": loss,
        "logits": logits,
        "generated": generated,
        "merged_logits": merged_logits,
        **saved_files(env.out),
    }


def prompt_tuning_causal_lm(lib: Any, env: Env) -> dict[str, Any]:
    """Prompt tuning for causal LM (bloomz guide): TEXT init from a tokenizer, train, save, reload, generate."""
    peft_config = lib.PromptTuningConfig(
        task_type=lib.TaskType.CAUSAL_LM,
        prompt_tuning_init=lib.PromptTuningInit.TEXT,
        num_virtual_tokens=8,
        prompt_tuning_init_text="t10 t11 t12 t13",
        tokenizer_name_or_path=env.tokenizer,
    )
    model = AutoModelForCausalLM.from_pretrained(env.bases["llama"])
    model = lib.get_peft_model(model, peft_config)
    model.print_trainable_parameters()
    loss = train_one_step(model, env.batches["llama"])
    model.save_pretrained(env.out)

    config = lib.PeftConfig.from_pretrained(env.out)
    model = AutoModelForCausalLM.from_pretrained(config.base_model_name_or_path)
    model = lib.PeftModel.from_pretrained(model, env.out)
    model.eval()
    batch = _inputs(env.batches["llama"])
    with torch.no_grad():
        logits = model(**batch).logits
    generated = model.generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        max_new_tokens=10,
        eos_token_id=3,
    )
    return {
        "loss": loss,
        "logits": logits,
        "generated": generated,
        "model": model,
        "config_attr": model.config.model_type,
        **saved_files(env.out),
    }


def p_tuning_seq_cls(lib: Any, env: Env) -> dict[str, Any]:
    """P-tuning for sequence classification: PromptEncoderConfig, train, save, reload, classify."""
    model = AutoModelForSequenceClassification.from_pretrained(env.bases["bert_seq_cls"])
    peft_config = lib.PromptEncoderConfig(task_type="SEQ_CLS", num_virtual_tokens=20, encoder_hidden_size=128)
    model = lib.get_peft_model(model, peft_config)
    model.print_trainable_parameters()
    loss = train_one_step(model, env.batches["bert_seq_cls"])
    model.save_pretrained(env.out)

    config = lib.PeftConfig.from_pretrained(env.out)
    inference_model = AutoModelForSequenceClassification.from_pretrained(config.base_model_name_or_path)
    model = lib.PeftModel.from_pretrained(inference_model, env.out)
    model.eval()
    with torch.no_grad():
        logits = model(**_inputs(env.batches["bert_seq_cls"])).logits
    return {"loss": loss, "logits": logits, "num_labels": model.config.num_labels, **saved_files(env.out)}


def prefix_tuning_seq2seq(lib: Any, env: Env) -> dict[str, Any]:
    """Prefix tuning for conditional generation: train, save, reload, generate."""
    peft_config = lib.PrefixTuningConfig(
        task_type=lib.TaskType.SEQ_2_SEQ_LM, inference_mode=False, num_virtual_tokens=20
    )
    model = AutoModelForSeq2SeqLM.from_pretrained(env.bases["t5"])
    model = lib.get_peft_model(model, peft_config)
    model.print_trainable_parameters()
    loss = train_one_step(model, env.batches["t5"])
    model.save_pretrained(env.out)

    config = lib.PeftConfig.from_pretrained(env.out)
    model = AutoModelForSeq2SeqLM.from_pretrained(config.base_model_name_or_path)
    model = lib.PeftModel.from_pretrained(model, env.out)
    model.eval()
    batch = env.batches["t5"]
    with torch.no_grad():
        logits = model(**batch).logits
    generated = model.generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=10
    )
    return {"loss": loss, "logits": logits, "generated": generated, "model": model, **saved_files(env.out)}


def ia3_seq2seq(lib: Any, env: Env) -> dict[str, Any]:
    """IA3 for seq2seq: IA3Config with PEFT's default targets, train, save, reload, generate."""
    model = AutoModelForSeq2SeqLM.from_pretrained(env.bases["t5"])
    peft_config = lib.IA3Config(task_type=lib.TaskType.SEQ_2_SEQ_LM, inference_mode=False)
    model = lib.get_peft_model(model, peft_config)
    model.print_trainable_parameters()
    loss = train_one_step(model, env.batches["t5"])
    model.save_pretrained(env.out)

    config = lib.PeftConfig.from_pretrained(env.out)
    model = AutoModelForSeq2SeqLM.from_pretrained(config.base_model_name_or_path)
    model = lib.PeftModel.from_pretrained(model, env.out)
    model.eval()
    batch = env.batches["t5"]
    with torch.no_grad():
        logits = model(**batch).logits
    generated = model.generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=10
    )
    return {"loss": loss, "logits": logits, "generated": generated, **saved_files(env.out)}


def token_cls_lora(lib: Any, env: Env) -> dict[str, Any]:
    """LoRA for token classification: bias="all", the head in modules_to_save (task type), train, reload."""
    model = AutoModelForTokenClassification.from_pretrained(env.bases["bert_token_cls"])
    peft_config = lib.LoraConfig(
        task_type=lib.TaskType.TOKEN_CLS,
        inference_mode=False,
        r=16,
        lora_alpha=16,
        lora_dropout=0.1,
        bias="all",
    )
    model = lib.get_peft_model(model, peft_config)
    model.print_trainable_parameters()
    loss = train_one_step(model, env.batches["bert_token_cls"])
    model.save_pretrained(env.out)

    config = lib.PeftConfig.from_pretrained(env.out)
    inference_model = AutoModelForTokenClassification.from_pretrained(config.base_model_name_or_path)
    model = lib.PeftModel.from_pretrained(inference_model, env.out)
    model.eval()
    with torch.no_grad():
        logits = model(**_inputs(env.batches["bert_token_cls"])).logits
    state = lib.get_peft_model_state_dict(model)
    return {"loss": loss, "logits": logits, "state_keys": sorted(state), **saved_files(env.out)}


SCRIPTS = {
    f.__name__: f
    for f in (
        quicktour_seq2seq_lora,
        causal_lm_lora,
        prompt_tuning_causal_lm,
        p_tuning_seq_cls,
        prefix_tuning_seq2seq,
        ia3_seq2seq,
        token_cls_lora,
    )
}
