"""The device check (`bash bench/device_check.sh RESULTS_DIR [--smoke-cpu]`, issue 18): one command that runs
every GPU measurement in sections, each in its own process with its own time limit, and writes
`RESULTS_DIR/<card>.md`.

- `__main__.py`: the driver (sections in order, a 9-minute budget shared among them, then the report).
- `common.py`: what every section shares: its result file (`Section`), device choice, timers (CUDA-graph
  replay with a cold L2, eager, CPU µs per call) and per-kernel device times from the profiler.
- `env.py`: versions, and which of the project's dependencies this machine lacks (sections skip on them).
- `tests.py`: the GPU-marked tests (compiled kernels), with a per-test timeout.
- `kernels.py`: the LoRA kernels against measured copy bandwidth (the table bench/gpu_check.py printed, reworked;
  gpu_check.py now runs the sections env, tests and kernels).
- `llama.py`: the Llama-3-8B-geometry model with adapters that `decode.py` and `graphs.py` step.
- `decode.py`: one decode step's milliseconds by kind (GEMM, LoRA, attention, KV) and against base-only.
- `serving.py`: S-LoRA's setting (100 rank-8 q/v adapters) through the real engine, against base-only.
- `graphs.py`: the decode step replayed in a CUDA graph against eager.
- `report.py`: the results markdown, with the issue's goals marked met / not met.
"""
