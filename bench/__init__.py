"""Benchmarks and their reports (never timed tests).

`bench.serving` is the serving benchmark behind `swapyard bench` (S-LoRA's workload over HTTP); the scripts
beside it (`bench_multi_adapter.py`, `bench_kernels_cpu.py`, `gpu_check.py`) measure single forwards and
kernels and run as plain scripts.
"""
