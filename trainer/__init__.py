"""Offline training that writes PEFT-format adapters (uses adapters_core; never imported by server).

Python API (the CLI is `swapyard train`, see swapyard/train_cli.py):

    from trainer.config import TrainConfig
    from trainer.run import train

    result = train(TrainConfig(base_model="path/or/hub-id", method="lora", task="causal-lm",
                               train_file="train.jsonl", eval_file="eval.jsonl", output_dir="runs/x"))
    result.metrics["final"]["eval_loss"]

Kept import-free so `swapyard train --help` does not load torch.
"""
