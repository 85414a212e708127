"""Offline training that writes PEFT-format adapters (uses adapters_core; never imported by server)."""
