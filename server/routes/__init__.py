"""HTTP routes, one small module per family: native generate, classify, OpenAI-compatible, operations."""
