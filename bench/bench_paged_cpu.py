"""One decode step of R rows at C tokens of context: Swapyard's paged step vs transformers' continuous batching
(its PagedAttentionCache + scheduler, `generate_batch`) vs today's padded step API (DynamicCache), on this CPU.

transformers' per-step time is taken from two `generate_batch` runs of the same prompts that differ only in new
tokens: (t(n2) - t(n1)) / (n2 - n1), i.e. its decode steps with their scheduling, everything else cancelled.
Swapyard's steps are timed directly (median of the decode steps). Greedy tokens of the three are compared.

    .venv/bin/python bench/bench_paged_cpu.py --rows 32 --context 400
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import transformers as tf
from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig

from adapters_core.multi import MultiAdapterModel
from adapters_core.paged import SeqChunk, StepPlan


def base(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return tf.LlamaForCausalLM(cfg).eval()


@torch.no_grad()
def theirs(prompts: list[list[int]], n1: int, n2: int, block: int) -> tuple[float, list[list[int]]]:
    model = base()
    cb = ContinuousBatchingConfig(page_size=block, max_batch_tokens=2048)
    times, outs = [], []
    for n in (n1, n2):
        gen = GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=-1, pad_token_id=0)
        t0 = time.perf_counter()
        out = model.generate_batch(prompts, generation_config=gen, continuous_batching_config=cb)
        times.append(time.perf_counter() - t0)
        outs = [
            list(o.generated_tokens)
            for o in sorted(out.values(), key=lambda o: int(o.request_id.split("_")[-1]))
        ]
    return (times[1] - times[0]) / (n2 - n1), outs


@torch.no_grad()
def ours(prompts: list[list[int]], steps: int, block: int) -> tuple[float, list[list[int]]]:
    model = MultiAdapterModel(base())
    per_row = -(-(len(prompts[0]) + steps + 1) // block)
    model.init_kv_cache(1 + per_row * len(prompts), block)
    tables = [list(range(1 + r * per_row, 1 + (r + 1) * per_row)) for r in range(len(prompts))]
    budget = 2048  # prefill in chunks of at most this many tokens, as a scheduler would
    done = [0] * len(prompts)
    logits: dict[int, torch.Tensor] = {}
    while any(d < len(p) for d, p in zip(done, prompts)):
        chunks, room = [], budget
        for r, p in enumerate(prompts):
            if done[r] < len(p) and room > 0:
                n = min(room, len(p) - done[r])
                chunks.append(
                    SeqChunk(r, None, p[done[r] : done[r] + n], done[r], tables[r], done[r] + n == len(p))
                )
                done[r] += n
                room -= n
        out = model.paged_step(StepPlan(chunks))
        for c, row in zip([c for c in chunks if c.want_logits], out):
            logits[c.seq_id] = row
    tokens = [[int(logits[r].argmax())] for r in range(len(prompts))]
    times = []
    for s in range(steps):
        plan = StepPlan(
            [SeqChunk(r, None, [tokens[r][-1]], len(prompts[r]) + s, tables[r]) for r in range(len(prompts))]
        )
        t0 = time.perf_counter()
        out = model.paged_step(plan)
        times.append(time.perf_counter() - t0)
        for r in range(len(prompts)):
            tokens[r].append(int(out[r].argmax()))
    return statistics.median(times), tokens


@torch.no_grad()
def padded(prompts: list[list[int]], steps: int) -> tuple[float, list[list[int]]]:
    model = MultiAdapterModel(base())
    logits, state = model.prefill(prompts, [None] * len(prompts))
    tokens = [[int(t)] for t in logits.argmax(-1)]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        logits, state = model.decode(state, torch.tensor([t[-1] for t in tokens]))
        times.append(time.perf_counter() - t0)
        for r, t in enumerate(logits.argmax(-1)):
            tokens[r].append(int(t))
    return statistics.median(times), tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--context", type=int, default=400)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--skip-transformers", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 2048, (args.context,), generator=g).tolist() for _ in range(args.rows)]
    mine, mine_tok = ours(prompts, args.steps, args.block)
    print(
        f"swapyard paged step:   {mine * 1e3:8.1f} ms / decode step ({args.rows} rows x {args.context} tokens)"
    )
    old, old_tok = padded(prompts, args.steps)
    print(f"padded step API:       {old * 1e3:8.1f} ms / decode step   (x{old / mine:.2f} of paged)")
    print(
        f"greedy tokens paged == padded: {[t[: args.steps] for t in mine_tok] == [t[: args.steps] for t in old_tok]}"
    )
    if not args.skip_transformers:
        hf, hf_tok = theirs(prompts, 1, 1 + args.steps, args.block)
        print(f"transformers CB:       {hf * 1e3:8.1f} ms / decode step   (x{hf / mine:.2f} of paged)")
        same = [t[: args.steps] for t in hf_tok] == [t[: args.steps] for t in mine_tok]
        print(f"greedy tokens paged == transformers CB: {same}")


if __name__ == "__main__":
    main()
