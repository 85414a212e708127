"""Section `serving`: S-LoRA's setting in process: 100 rank-8 LoRA adapters on q_proj/v_proj served by the
real engine (built from `Settings` as `swapyard serve` builds it, requests through `Engine.submit_generate`),
against the same engine serving the same requests with no adapter.

Base: Llama-7B geometry (hidden 4096, MLP 11008, 32 heads, vocab 32,000) with 4 layers, bf16, random weights,
saved with a word-level tokenizer and no EOS (bench/serving/fixtures.py), so every request makes exactly its
new tokens. Workload (seeded): every request arrives at once (a closed batch: throughput at capacity),
prompts of 8-256 tokens, 64 new tokens, each request's adapter drawn uniformly from the 100. A warm-up run
(Triton compiles, allocator) comes first and is not counted; then base-only and adapters alternate twice,
the best run of each counts. Goal: adapters >= 0.9x base-only's tokens per second.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from pathlib import Path
from typing import Any, Literal

from bench.device.common import Goal, Section, device, section_args, skip_unless_importable

GOAL_RATIO = 0.9
SERVER_MODULES = (
    "pydantic",
    "pydantic_settings",
    "fastapi",
    "prometheus_client",
    "tokenizers",
    "safetensors",
)


def workload(
    n: int, lo: int, hi: int, vocab: int, adapters: int, seed: int = 0
) -> tuple[list[list[int]], list[str]]:
    from bench.serving.fixtures import adapter_name

    rng = random.Random(seed)
    prompts = [[rng.randrange(2, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]
    return prompts, [adapter_name(rng.randrange(adapters)) for _ in range(n)]


def build(root: Path, smoke: bool, n_adapters: int) -> Any:
    """Write the base and adapters under `root`; return the engine (not started)."""
    import torch

    from bench.serving.fixtures import AdapterSpec, BaseSpec, build_base, save_base, write_adapters
    from server.engine import build_engine
    from server.settings import Settings

    dev = "cpu" if smoke else "cuda"
    dtype: Literal["float32", "bfloat16"] = "float32" if smoke else "bfloat16"
    spec = (
        BaseSpec(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=176,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=1024,
        )
        if smoke
        else BaseSpec(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=4,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=1024,
        )
    )
    model = build_base(spec, device=dev, dtype=getattr(torch, dtype))
    save_base(model, spec, root / "base")
    adapters = AdapterSpec(
        n_adapters=n_adapters, ranks=(8,), target_modules=("q_proj", "v_proj"), dtype=dtype
    )
    write_adapters(model, adapters, root / "base", root / "adapters", device=dev)
    del model
    settings = Settings(
        base_model=str(root / "base"),
        adapter_dir=str(root / "adapters"),
        device=dev,
        dtype=dtype,
        max_adapters=n_adapters,
        preload_adapters=n_adapters,
        adapter_device_bytes=(64 << 20) if smoke else (1 << 30),
        max_input_tokens=512,
        max_total_tokens=1024,
        max_new_tokens_limit=512,
        max_batch_size=8 if smoke else 128,
        max_queued_requests=1024,
        kv_cache_bytes=(64 << 20) if smoke else (16 << 30),
        log_level="warning",
    )
    return build_engine(settings)


async def measure(engine: Any, smoke: bool, n_adapters: int, section: Section) -> float:
    """Tokens per second of both systems (best of two, alternated); returns adapters / base-only."""
    from bench.engine_setup import serve

    n, lo, hi, new = (8, 4, 16, 4) if smoke else (256, 8, 256, 64)
    prompts, names = workload(n, lo, hi, 256 if smoke else 32000, n_adapters)
    await engine.registry.start(n_adapters)
    engine.start()
    try:
        warm = await serve(engine, prompts[: n // 4], list(names[: n // 4]), new)
        await serve(engine, prompts[: n // 4], [None] * (n // 4), new)
        section.add(f"warm-up ({n // 4} requests with adapters, then without): {warm.wall:.1f} s", "")
        best: dict[str, float] = {}
        section.add(
            "| run | system | requests | new tokens | wall s | tokens/s |", "|---|---|---|---|---|---|"
        )
        for rep in range(2):
            systems: list[tuple[str, list[str | None]]] = [
                ("base-only", [None] * n),
                ("100 adapters", list(names)),
            ]
            for system, rows in systems:
                run = await serve(engine, prompts, rows, new)
                made = sum(len(t) for t in run.tokens)
                if made != n * new:
                    raise SystemExit(f"serving: {system} made {made} tokens, expected {n * new}")
                rate = made / run.wall
                best[system] = max(best.get(system, 0.0), rate)
                section.add(f"| {rep + 1} | {system} | {n} | {new} | {run.wall:.2f} | {rate:.0f} |")
    finally:
        engine.stop()
    return best["100 adapters"] / best["base-only"]


def main(argv: list[str] | None = None) -> None:
    args = section_args(__doc__, argv)
    section = Section("serving", "Serving throughput: S-LoRA's setting against base-only")
    if skip_unless_importable(section, args.out, "transformers", *SERVER_MODULES):
        return
    device(args.smoke_cpu)
    n_adapters = 100
    section.add(
        f"{n_adapters} rank-8 q/v adapters; base {'tiny (smoke)' if args.smoke_cpu else 'Llama-7B geometry, 4 layers, bf16'}; "
        "the real engine in process, all requests at once.",
        "",
    )
    with tempfile.TemporaryDirectory(prefix="swapyard-serving-") as tmp:
        engine = build(Path(tmp), args.smoke_cpu, n_adapters)
        ratio = asyncio.run(measure(engine, args.smoke_cpu, n_adapters, section))
    section.add("", f"adapters / base-only tokens per second (best runs): {ratio:.2f}x")
    section.goals.append(
        Goal(
            "S-LoRA setting (100 rank-8 q/v adapters) throughput vs base-only",
            f"{ratio:.2f}x",
            f">= {GOAL_RATIO}x",
            ratio >= GOAL_RATIO,
        )
    )
    section.save(args.out)


if __name__ == "__main__":
    main()
