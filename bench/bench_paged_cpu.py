"""One decode step of R rows at C tokens of context: Swapyard's paged step vs transformers' continuous batching
(its PagedAttentionCache + scheduler, `generate_batch`), on this CPU. (The engine's old padded step API is gone;
its recorded numbers stay in bench/README.md as history.)

transformers' per-step time is taken from two `generate_batch` runs of the same prompts that differ only in new
tokens: (t(n2) - t(n1)) / (n2 - n1), i.e. its decode steps with their scheduling, everything else cancelled.
Swapyard's steps are timed directly. CPU time of this process, minimum over repeats (robust to a shared
machine). Greedy tokens of the two are compared.

    .venv/bin/python bench/bench_paged_cpu.py --rows 32 --context 400
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers as tf
from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig

from adapters_core.multi import MultiAdapterModel
from adapters_core.paged import SeqChunk, StepPlan

VOCAB = 2048


def llama_config() -> tf.LlamaConfig:
    """The benchmarks' Llama (here and bench/engine_setup.py): hidden 256, 4 layers, GQA 8/4, vocab 2,048,
    4,096 positions."""
    return tf.LlamaConfig(
        vocab_size=VOCAB,
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


def base(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return tf.LlamaForCausalLM(llama_config()).eval()


def clock() -> float:
    """CPU seconds of this process: robust to other processes sharing the machine (run with --threads 1)."""
    return time.process_time()


@torch.no_grad()
def theirs(
    prompts: list[list[int]], n1: int, n2: int, block: int, repeats: int
) -> tuple[float, list[list[int]]]:
    model = base()
    # a pool just big enough (left alone it sizes itself from free memory: 12 GB on a 23 GB machine)
    blocks = len(prompts) * -(-(max(map(len, prompts)) + n2 + 2) // block) + 8
    cb = ContinuousBatchingConfig(page_size=block, num_blocks=blocks, max_batch_tokens=2048)
    times: dict[int, list[float]] = {n1: [], n2: []}
    walls: dict[int, list[float]] = {n1: [], n2: []}
    outs: list[list[int]] = []
    for n in [n1] + [n1, n2] * repeats:  # the first run warms up
        gen = GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=-1, pad_token_id=0)
        t0, w0 = clock(), time.perf_counter()
        out = model.generate_batch(
            prompts, generation_config=gen, continuous_batching_config=cb, progress_bar=False
        )
        times[n].append(clock() - t0)
        walls[n].append(time.perf_counter() - w0)
        outs = [
            list(o.generated_tokens)
            for o in sorted(out.values(), key=lambda o: int(o.request_id.split("_")[-1]))
        ]
    wall = (min(walls[n2]) - min(walls[n1])) / (n2 - n1)
    print(
        f"transformers CB wall clock: {wall * 1e3:8.1f} ms / decode step (its manager thread counts in CPU time)"
    )
    return (min(times[n2]) - min(times[n1])) / (n2 - n1), outs


@torch.no_grad()
def ours(prompts: list[list[int]], steps: int, block: int) -> tuple[float, list[list[int]]]:
    model = MultiAdapterModel(base())
    per_row = -(-(max(map(len, prompts)) + steps + 1) // block)
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
        t0 = clock()
        out = model.paged_step(plan)
        times.append(clock() - t0)
        for r in range(len(prompts)):
            tokens[r].append(int(out[r].argmax()))
    return min(times), tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--context", type=int, default=400)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mixed", action="store_true", help="prompt lengths uniform in [context/2, context]")
    ap.add_argument("--skip-transformers", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    lengths = [
        int(torch.randint(args.context // 2, args.context + 1, (1,), generator=g))
        if args.mixed
        else args.context
        for _ in range(args.rows)
    ]
    prompts = [torch.randint(3, 2048, (n,), generator=g).tolist() for n in lengths]
    mine, mine_tok = ours(prompts, args.steps, args.block)
    print(
        f"swapyard paged step:   {mine * 1e3:8.1f} ms CPU / decode step ({args.rows} rows x {args.context} tokens)"
    )
    if not args.skip_transformers:
        hf, hf_tok = theirs(prompts, 1, 1 + args.steps, args.block, args.repeats)
        print(f"transformers CB:       {hf * 1e3:8.1f} ms / decode step   (x{hf / mine:.2f} of paged)")
        same = [t[: args.steps] for t in hf_tok] == [t[: args.steps] for t in mine_tok]
        print(f"greedy tokens paged == transformers CB: {same}")


if __name__ == "__main__":
    main()
