"""Serving: HTTP API, continuous-batching engine, adapter store, metrics and the `swapyard` CLI."""
