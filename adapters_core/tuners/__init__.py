"""The live form of adapter methods over a transformers model (PEFT's tuners)."""
