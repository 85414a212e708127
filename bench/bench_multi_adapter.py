"""MultiAdapterModel vs PEFT's mixed batch vs the base model alone, side by side in one run (CPU).

Base: Llama-style, hidden 512, 4 layers, vocab 2048; adapters: LoRA rank 16 on all linear layers, each one
distinct (random weights). Shapes (issue 5):
  decode:  64 rows x 1 token, 64 distinct adapters
  prefill: 32 rows x 32 tokens, 32 distinct adapters
PEFT runs `model(..., adapter_names=[...])` (its `_mixed_batch_forward`); Swapyard runs
`MultiAdapterModel(..., adapter_names=[...])`; both are checked equal before timing. Repetitions are
interleaved (base, peft, ours, base, ...) so machine noise hits all three alike; the table shows medians.

    .venv/bin/python bench/bench_multi_adapter.py [--reps 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
from transformers import LlamaForCausalLM

from adapters_core.multi import MultiAdapterModel
from adapters_core.tiny import tiny_model


def build_base(seed: int = 0) -> LlamaForCausalLM:
    """The project's tiny Llama (adapters_core/tiny.py) at benchmark size, with Llama's default token ids."""
    return tiny_model(  # type: ignore[no-any-return]
        "llama",
        seed,
        vocab_size=2048,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=256,
        pad_token_id=None,
    )


def build_peft(base: torch.nn.Module, n: int, rank: int):
    import peft

    cfg = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", task_type="CAUSAL_LM")
    model = peft.get_peft_model(copy.deepcopy(base), cfg, adapter_name="a0")
    for i in range(1, n):
        model.add_adapter(f"a{i}", cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def build_ours(base: torch.nn.Module, peft_model, n: int) -> MultiAdapterModel:
    ours = MultiAdapterModel(
        copy.deepcopy(base), max_adapters=n, rank_capacity=64, adapter_memory_bytes=1 << 30
    )
    for i in range(n):
        name = f"a{i}"
        state = peft_model.base_model  # PEFT keys, as PEFT would save them
        from peft.utils import get_peft_model_state_dict

        sd = get_peft_model_state_dict(peft_model, adapter_name=name)
        from adapters_core import AdapterConfig

        config = AdapterConfig.from_dict(peft_model.peft_config[name].to_dict())
        ours.add(name, (config, sd))
        del state
    return ours


def time_it(fn, reps: int) -> list[float]:
    return [_once(fn) for _ in range(reps)]


def _once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(shape: str, rows: int, tokens: int, n_adapters: int, reps: int, base, peft_model, ours) -> dict:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 2048, (rows, tokens), generator=g)
    names = [f"a{i % n_adapters}" for i in range(rows)]
    with torch.no_grad():
        ref = peft_model(input_ids=ids, adapter_names=names).logits
        out = ours(input_ids=ids, adapter_names=names).logits
    diff = float((ref - out).abs().max())
    assert diff < 1e-3, f"{shape}: Swapyard and PEFT disagree by {diff}"
    fns = {
        "base": lambda: base(input_ids=ids),
        "peft": lambda: peft_model(input_ids=ids, adapter_names=names),
        "swapyard": lambda: ours(input_ids=ids, adapter_names=names),
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():  # warm-up
            fn()
        for _ in range(reps):
            for k, fn in fns.items():
                times[k].append(_once(fn))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {"shape": shape, "rows": rows, "tokens": tokens, "adapters": n_adapters, "diff": diff, **med}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    base = build_base()
    results = []
    for shape, rows, tokens, n in (("decode", 64, 1, 64), ("prefill", 32, 32, 32)):
        peft_model = build_peft(base, n, args.rank)
        ours = build_ours(base, peft_model, n)
        results.append(run(shape, rows, tokens, n, args.reps, base, peft_model, ours))
        del peft_model, ours
    print(
        f"torch {torch.__version__}, {args.threads} threads, rank {args.rank}, medians of {args.reps} reps\n"
    )
    print(
        "| shape | rows x tokens | adapters | base ms | PEFT ms | Swapyard ms | vs PEFT | vs base-only | max diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['shape']} | {r['rows']} x {r['tokens']} | {r['adapters']} | {r['base']:.1f} | {r['peft']:.1f} | "
            f"{r['swapyard']:.1f} | {r['peft'] / r['swapyard']:.2f}x | {r['base'] / r['swapyard']:.2f} | "
            f"{r['diff']:.1e} |"
        )


if __name__ == "__main__":
    main()
