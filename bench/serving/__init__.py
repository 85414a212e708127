"""`swapyard bench`: S-LoRA's serving benchmark (arXiv 2311.03285, section 7) against real server processes.

    workload.py     seeded request traces: adapter popularity by a power law, Gamma arrivals, lengths
    fixtures.py     the served files: a tiny base with a word-level tokenizer, N PEFT-format LoRA folders,
                    the base with one adapter merged into its weights
    servers.py      starting `swapyard serve` and the PEFT baseline as processes; /metrics scrapes; RSS
    peft_server.py  the PEFT baseline: transformers + PEFT's mixed-batch `adapter_names` behind /generate_stream
    client.py       the load client: open loop (the trace's arrival times) or closed loop, streaming
    report.py       percentiles, throughput, SLO attainment, the goals, the markdown table
    plots.py        PNG plots (matplotlib)
    presets.py      micro (tests), cpu-small, s-lora-7b, and the check that a machine can run one
    runner.py       one benchmark run: systems interleaved per setting, results to JSON
    cli.py          the `swapyard bench` flags

Everything talks HTTP to the servers, so it measures whatever engine the server runs.
"""
