"""Issue 16's engine numbers on this CPU, side by side in one run (interleaved repetitions, medians).

1. throughput: 32 concurrent requests (prompts of 16-400 tokens, rows spread over the base and 4 LoRA
   adapters), 32 new greedy tokens each (EOS ignored), served in process through `Engine.submit_generate` by
   the engine at several `--max-batch-tokens`, and by transformers' static batched `generate` (left padding)
   through PEFT's mixed batch (`adapter_names`); base-only `generate` for scale. Every system's tokens are
   checked equal. (The engine's old padded path is gone; its recorded numbers stay in bench/README.md.)
2. inter-token latency of running rows while a 1,500-token prompt is admitted (step times from the engine's
   emit stage): p99 during its admission vs steady p99.
3. memory of one decode step at 256 and 2,048 tokens of context (bench/alloc.py), the paged step vs the bare base's step over
   transformers' `DynamicCache`: the peak of the bytes alive at once among the storages the step's ops create
   (the transient memory above the steady state; a TorchDispatchMode that follows each storage until its last
   tensor dies), the cumulative total, and what is still alive after the step (kept by the model's state).
4. KV memory of the 32 mixed rows: blocks used x block bytes vs their real tokens' KV, vs N x longest.

5. (--key-tiles) the decode step's peak transient memory and time by KEY_TILE and context, on the bench model
   or (--dims) a random Llama of realistic dims.

    .venv/bin/python bench/bench_engine_cpu.py --reps 3
    .venv/bin/python bench/bench_engine_cpu.py --skip throughput itl alloc --key-tiles 128 256 512 0
    .venv/bin/python bench/bench_engine_cpu.py --skip throughput itl alloc --key-tiles 128 256 512 0 \
        --dims 2048:16:8:2 --tile-rows 8 --tile-reps 5
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import transformers as tf

from adapters_core.multi import MultiAdapterModel
from adapters_core.paged import SeqChunk, StepPlan
from bench.alloc import AllocCounter, paged_decode_counter
from bench.bench_paged_cpu import llama_config
from bench.engine_setup import (
    ADAPTERS,
    VOCAB,
    Run,
    make_engine,
    record_steps,
    serve,
    start,
    submit,
    write_base_and_adapters,
)

ROWS, NEW = 32, 32


def workload(seed: int = 0) -> tuple[list[list[int]], list[str | None]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(16, 401, (ROWS,), generator=g).tolist()
    prompts = [torch.randint(4, VOCAB, (n,), generator=g).tolist() for n in lengths]
    names: list[str | None] = [[None, *ADAPTERS][i % (len(ADAPTERS) + 1)] for i in range(ROWS)]
    return prompts, names


@torch.no_grad()
def hf_generate(model: Any, prompts: list[list[int]], names: list[str | None] | None) -> tuple[float, list]:
    """transformers' batched generate, static batch, left padding; `names`: PEFT mixed batch."""
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p)
        mask[r, width - len(p) :] = 1
    extra = {} if names is None else {"adapter_names": [n or "__base__" for n in names]}
    gen = tf.GenerationConfig(
        max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    t0 = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen, **extra)
    wall = time.perf_counter() - t0
    return wall, out[:, width:].tolist()


def throughput(loop: asyncio.AbstractEventLoop, base_dir: Path, adapters: dict, args: Any) -> dict:
    import peft

    prompts, names = workload()
    systems: dict[str, Any] = {
        paged_label(m, p): make_engine(base_dir, adapters, max_batch_tokens=m, prefill_while_decoding=p)
        for m, p in args.paged
    }
    for engine in systems.values():
        loop.run_until_complete(start(engine))
    peft_model = peft.PeftModel.from_pretrained(
        tf.AutoModelForCausalLM.from_pretrained(base_dir), str(adapters["a0"]), adapter_name="a0"
    ).eval()
    for name in ADAPTERS[1:]:
        peft_model.load_adapter(str(adapters[name]), adapter_name=name)
    base_model = tf.AutoModelForCausalLM.from_pretrained(base_dir).eval()
    walls: dict[str, list[float]] = defaultdict(list)
    tokens: dict[str, list] = {}
    runs: dict[str, Run] = {}
    for rep in range(args.reps + 1):  # the first repetition warms up and is dropped
        for label, engine in systems.items():
            run = loop.run_until_complete(serve(engine, prompts, names, NEW))
            walls[label].append(run.wall)
            tokens[label], runs[label] = run.tokens, run
        for label, model, mixed in [
            ("generate PEFT mixed", peft_model, names),
            ("generate base only", base_model, None),
        ]:
            wall, toks = hf_generate(model, prompts, mixed)
            walls[label].append(wall)
            tokens[label] = toks
        print(f"rep {rep}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in walls.items()), flush=True)
    for engine in systems.values():
        engine.stop()
    # the engine rows on the base model must equal base-only generate; all rows must equal PEFT's mixed batch
    ref = tokens["generate PEFT mixed"]
    same = {k: sum(a == b for a, b in zip(v, ref)) for k, v in tokens.items() if k != "generate base only"}
    base_rows = [r for r, n in enumerate(names) if n is None]
    same["base rows == generate base only"] = sum(
        tokens["generate base only"][r] == ref[r] for r in base_rows
    )
    med = {k: statistics.median(v[1:]) for k, v in walls.items()}
    return {
        "median_wall": med,
        "same_tokens": same,
        "base_rows": len(base_rows),
        "runs": runs,
        "lengths": list(map(len, prompts)),
    }


def itl(loop: asyncio.AbstractEventLoop, base_dir: Path, adapters: dict, args: Any) -> dict:
    """8 running rows (prompts of 64 tokens) decode; after 40 steady tokens a 1,500-token prompt arrives."""
    g = torch.Generator().manual_seed(1)
    short = [torch.randint(4, VOCAB, (64,), generator=g).tolist() for _ in range(8)]
    long = torch.randint(4, VOCAB, (1500,), generator=g).tolist()
    out = {}
    for label, mbt, pwd in [(paged_label(m, p), m, p) for m, p in args.itl_paged]:
        engine = make_engine(base_dir, adapters, max_batch_tokens=mbt, prefill_while_decoding=pwd)
        loop.run_until_complete(start(engine))
        run = Run()
        record_steps(engine, run)

        async def go(engine: Any = engine, run: Run = run) -> tuple[float, float, list[int]]:
            rows = [await submit(engine, p, ADAPTERS[i % 4], 120) for i, p in enumerate(short)]
            ids = [h.id for h, _ in rows]
            while sum(1 for _, hs, *_ in run.steps if ids[0] in hs) < 40:
                await asyncio.sleep(0.01)
            t_submit = time.perf_counter()
            h, task = await submit(engine, long, None, 4)
            await task
            first = next(t for t, hs, *_ in run.steps if h.id in hs)
            await asyncio.gather(*(t for _, t in rows))
            return t_submit, first, ids

        t_submit, first, ids = loop.run_until_complete(go())
        engine.stop()
        steady, admit = [], []
        for hid in ids:
            times = [t for t, hs, *_ in run.steps if hid in hs]
            for a, b in itertools.pairwise(times[5:]):  # the first steps admit the 8 rows themselves
                if b <= t_submit:
                    steady.append(b - a)
                elif a < first:  # the gap overlaps the long prompt's admission (up to its first token)
                    admit.append(b - a)
        out[label] = (statistics.median(steady), p99(steady), p99(admit), max(admit), len(admit))
    return out


def paged_config(text: str) -> tuple[int, int | None]:
    """`MBT` or `MBT:PWD` (--max-batch-tokens, --max-prefill-tokens-while-decoding; PWD `off` = MBT)."""
    mbt, _, pwd = text.partition(":")
    return int(mbt), (None if not pwd else int(mbt) if pwd == "off" else int(pwd))


def paged_label(mbt: int, pwd: int | None) -> str:
    if pwd is None:
        return f"paged mbt={mbt}"
    return f"paged mbt={mbt} pwd={'off' if pwd >= mbt else pwd}"


def p99(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[98] if len(xs) > 1 else xs[0]


@torch.no_grad()
def step_bytes(base_dir: Path, context: int, rows: int = 4, block: int = 16) -> dict[str, AllocCounter]:
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(4, VOCAB, (context,), generator=g).tolist() for _ in range(rows)]
    model = MultiAdapterModel(tf.AutoModelForCausalLM.from_pretrained(base_dir).eval())
    paged = paged_decode_counter(model, prompts, block)
    base = tf.AutoModelForCausalLM.from_pretrained(base_dir).eval()  # transformers alone, DynamicCache
    first = base(input_ids=torch.tensor(prompts), use_cache=True)
    dynamic = AllocCounter()
    with dynamic:
        kept = base(
            input_ids=first.logits[:, -1:].argmax(-1), past_key_values=first.past_key_values, use_cache=True
        )
    dynamic.alive = dynamic.retained()
    del kept
    return {"paged": paged, "transformers DynamicCache": dynamic}


def dims_config(text: str) -> tf.LlamaConfig:
    """`HIDDEN:HEADS:KV_HEADS[:LAYERS]` -> a Llama of those dims (head_dim HIDDEN / HEADS, MLP 2.75 x HIDDEN,
    the bench vocab, 2 layers unless given)."""
    hidden, heads, kv, *layers = (int(x) for x in text.split(":"))
    cfg = llama_config()
    cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads = hidden, heads, kv
    cfg.head_dim = hidden // heads
    cfg.intermediate_size = hidden * 11 // 4
    cfg.num_hidden_layers = layers[0] if layers else 2
    cfg.max_position_embeddings = 8192
    return cfg


@torch.no_grad()
def key_tiles(model: Any, label: str, args: Any, block: int = 16) -> None:
    """The paged decode step of `args.tile_rows` rows at several `attention.KEY_TILE`s (keys per tile of the
    online-softmax decode attention; 0 = one tile of the whole stream, "untiled") and contexts: peak transient
    MiB (AllocCounter) and the median step's CPU time (`time.thread_time` of the stepping thread, torch on 1
    thread: on a shared machine the wall time also counts the waits for a core), repetitions interleaved over
    tiles. The pool is filled with random keys and values instead of a prefill (the step's cost does not depend
    on them)."""
    from adapters_core.paged import attention

    default, rows = attention.KEY_TILE, args.tile_rows
    print(
        f"\n## decode step by KEY_TILE: {label}, {rows} rows ({default} in adapters_core/paged/attention.py)"
    )
    print("| context | KEY_TILE | peak above the steady state MiB | median step CPU ms |\n|---|---|---|---|")
    for context in args.contexts:
        per_row = -(-(context + 2) // block)
        model.init_kv_cache(1 + per_row * rows, block)
        pool = model._paged_state.pool
        gen = torch.Generator().manual_seed(3)
        for t in [*pool.keys, *pool.values]:
            t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype))
        tables = [list(range(1 + r * per_row, 1 + (r + 1) * per_row)) for r in range(rows)]
        plan = StepPlan([SeqChunk(r, None, [5], context, tables[r]) for r in range(rows)])
        times: dict[int, list[float]] = defaultdict(list)
        peaks = {}
        for tile in args.key_tiles:
            attention.KEY_TILE = tile or 1 << 30
            model.paged_step(plan)  # warm-up
            counter = AllocCounter()
            with counter:
                model.paged_step(plan)
            peaks[tile] = counter.peak
        for _ in range(args.tile_reps):
            for tile in args.key_tiles:
                attention.KEY_TILE = tile or 1 << 30
                t0 = time.thread_time()
                model.paged_step(plan)
                times[tile].append(time.thread_time() - t0)
        for tile in args.key_tiles:
            ms = statistics.median(times[tile]) * 1000
            print(f"| {context} | {tile or 'untiled'} | {peaks[tile] / 2**20:.2f} | {ms:.2f} |", flush=True)
    attention.KEY_TILE = default


def profile(loop: asyncio.AbstractEventLoop, base_dir: Path, adapters: dict) -> None:
    """Where the paged engine's time goes: the throughput workload once, cProfile of the engine thread's steps."""
    import cProfile
    import io
    import pstats

    prompts, names = workload()
    engine = make_engine(base_dir, adapters, max_batch_tokens=512)
    loop.run_until_complete(start(engine))
    loop.run_until_complete(serve(engine, prompts, names, NEW))  # warm-up
    prof = cProfile.Profile()
    step = engine.step
    engine.step = lambda: prof.runcall(step)  # type: ignore[method-assign]
    t0 = time.perf_counter()
    loop.run_until_complete(serve(engine, prompts, names, NEW))
    wall = time.perf_counter() - t0
    engine.stop()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(18)
    stats.sort_stats("tottime").print_stats(12)
    print(f"\n## profile of one paged serve (mbt 512, engine thread): {wall:.2f} s wall")
    print(out.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--paged",
        type=paged_config,
        nargs="+",
        default=[paged_config(c) for c in ("512", "512:off", "2048:off")],
        help="paged engines to serve the throughput workload with: MBT[:PWD], --max-batch-tokens and "
        "--max-prefill-tokens-while-decoding (omitted: the default, 64 on the CPU; `off`: no cap below MBT)",
    )
    ap.add_argument(
        "--itl-paged",
        type=paged_config,
        nargs="+",
        default=[paged_config(c) for c in ("512", "512:128", "512:off", "128:off")],
        help="paged engines for the inter-token latency measure (as --paged)",
    )
    ap.add_argument(
        "--key-tiles",
        type=int,
        nargs="*",
        default=[],
        help="also: the decode step at these KEY_TILEs (0: untiled, one tile of the whole stream)",
    )
    ap.add_argument("--tile-reps", type=int, default=30, help="timed decode steps per KEY_TILE and context")
    ap.add_argument("--tile-rows", type=int, default=4, help="decode rows of the --key-tiles steps")
    ap.add_argument(
        "--contexts",
        type=int,
        nargs="+",
        default=[256, 1024, 2048, 4096],
        help="contexts of the --key-tiles steps",
    )
    ap.add_argument(
        "--dims",
        type=dims_config,
        default=None,
        help="run the --key-tiles steps on a random Llama of HIDDEN:HEADS:KV_HEADS[:LAYERS] (e.g. 2048:16:8:2) "
        "instead of the bench model",
    )
    ap.add_argument("--skip", nargs="*", default=[], choices=["throughput", "itl", "alloc"])
    ap.add_argument(
        "--profile", action="store_true", help="also: one paged serve (mbt 512) under torch.profiler"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory() as tmp:
        base_dir, adapters = write_base_and_adapters(Path(tmp))
        if "throughput" not in args.skip:
            res = throughput(loop, base_dir, adapters, args)
            med, toks = res["median_wall"], ROWS * NEW
            paged = min((v, k) for k, v in med.items() if k.startswith("paged"))
            print(
                f"\n## throughput: {ROWS} requests, prompts {min(res['lengths'])}-{max(res['lengths'])} tokens, {NEW} new each"
            )
            print("| system | median wall s | tokens/s | best paged / this |\n|---|---|---|---|")
            for k, v in med.items():
                print(f"| {k} | {v:.2f} | {toks / v:.0f} | {v / paged[0]:.2f}x |")
            print(
                f"identical tokens to PEFT mixed generate (of {ROWS} rows): {res['same_tokens']} (base rows: {res['base_rows']})"
            )
            print(
                f"\n## KV memory of the 32 mixed rows (peak step of the run {paged_label(*max(args.paged, key=lambda c: c[0]))})"
            )
            run = res["runs"][paged_label(*max(args.paged, key=lambda c: c[0]))]
            _, _, used, computed = max(run.steps, key=lambda s: s[2])
            model = MultiAdapterModel(tf.AutoModelForCausalLM.from_pretrained(base_dir))
            block_bytes = model.kv_block_bytes(16)
            token_bytes = block_bytes // 16
            longest = max(res["lengths"]) + NEW
            print(
                f"blocks used {used} x {block_bytes} B = {used * block_bytes / 2**20:.2f} MiB; real tokens {computed} x {token_bytes} B = "
                f"{computed * token_bytes / 2**20:.2f} MiB; ratio {used * block_bytes / (computed * token_bytes):.3f}"
            )
            print(
                f"a static padded batch (N x longest at the end): {ROWS} x {longest} x {token_bytes} B = {ROWS * longest * token_bytes / 2**20:.2f} MiB; "
                f"the paged rows' real tokens at the end: {sum(res['lengths']) + ROWS * NEW} -> ratio padded/real {ROWS * longest / (sum(res['lengths']) + ROWS * NEW):.2f}"
            )
        if "itl" not in args.skip:
            print("\n## inter-token latency of 8 running rows while a 1,500-token prompt is admitted")
            print(
                "| system | steady median ms | steady p99 ms | admission p99 ms | admission max ms | gaps | p99 ratio |"
            )
            print("|---|---|---|---|---|---|---|")
            for k, (m50, s, a, m, n) in itl(loop, base_dir, adapters, args).items():
                print(
                    f"| {k} | {m50 * 1e3:.1f} | {s * 1e3:.1f} | {a * 1e3:.1f} | {m * 1e3:.1f} | {n} | {a / s:.2f}x |"
                )
        if args.profile:
            profile(loop, base_dir, adapters)
        if "alloc" not in args.skip:
            print("\n## memory of one decode step (4 rows)")
            print(
                "| context | path | peak above the steady state MiB | allocated in all MiB | still alive after "
                "the step MiB | largest ops (allocated) MiB |"
            )
            print("|---|---|---|---|---|---|")
            for ctx in (256, 2048):
                for path, counter in step_bytes(base_dir, ctx).items():
                    ops = counter.by_op
                    top = sorted(ops.items(), key=lambda kv: -kv[1])[:3]
                    print(
                        f"| {ctx} | {path} | {counter.peak / 2**20:.2f} | {sum(ops.values()) / 2**20:.2f} | "
                        f"{counter.alive / 2**20:.2f} | "
                        + ", ".join(f"{k} {v / 2**20:.2f}" for k, v in top)
                        + " |"
                    )
        if args.key_tiles:
            if args.dims is None:
                model = MultiAdapterModel(tf.AutoModelForCausalLM.from_pretrained(base_dir).eval())
                key_tiles(model, "the bench model (hidden 256, 8/4 heads, head_dim 32, 4 layers)", args)
            else:
                c = args.dims
                torch.manual_seed(0)
                model = MultiAdapterModel(tf.LlamaForCausalLM(c).eval())
                label = (
                    f"hidden {c.hidden_size}, {c.num_attention_heads}/{c.num_key_value_heads} heads, head_dim "
                    f"{c.head_dim}, {c.num_hidden_layers} layers"
                )
                key_tiles(model, label, args)


if __name__ == "__main__":
    main()
