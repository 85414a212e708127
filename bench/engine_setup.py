"""What bench_engine_cpu.py serves: a small Llama saved with a word-level tokenizer and a few perturbed LoRA
adapters (written to a temporary directory, no downloads), an in-process engine built from Settings as the
server builds it, and an async driver that submits requests through `Engine.submit_generate` and records
the time of every engine step that emitted tokens.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers as tf
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit

from bench.bench_paged_cpu import VOCAB, llama_config
from server.engine import Engine, FinishEvent, GenerationRequest, TokenEvent, build_engine
from server.sampling import SamplingParams
from server.settings import Settings

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
ADAPTERS = ["a0", "a1", "a2", "a3"]  # LoRA rank 16 on every linear layer, each distinct


def write_base_and_adapters(root: Path) -> tuple[Path, dict[str, Path]]:
    """Save the base (seed 0, head sharpened so that greedy choices are clear-cut), its tokenizer and the
    adapters under `root`; returns the base directory and {adapter name: directory}."""
    import peft

    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(llama_config()).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(10.0)
    base_dir = root / "base"
    model.save_pretrained(base_dir)
    vocab = {t: i for i, t in enumerate(SPECIALS + [f"w{i}" for i in range(VOCAB - len(SPECIALS))])}
    word_level = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = WhitespaceSplit()
    tf.PreTrainedTokenizerFast(
        tokenizer_object=word_level, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(base_dir)
    adapters = {}
    for i, name in enumerate(ADAPTERS):
        peft_model = peft.get_peft_model(
            tf.AutoModelForCausalLM.from_pretrained(base_dir),
            peft.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
        g = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for pname, p in peft_model.named_parameters():
                if "lora_" in pname:  # LoRA B starts at zero: give both factors noise so the adapter matters
                    p.copy_(0.05 * torch.randn(p.shape, generator=g))
        peft_model.save_pretrained(root / name)
        adapters[name] = root / name
    return base_dir, adapters


def make_engine(
    base_dir: Path,
    adapters: dict[str, Path],
    *,
    max_batch_tokens: int,
    kv_cache_bytes: int = 256 << 20,
    prefill_while_decoding: int | None = None,
) -> Engine:
    """An engine as `swapyard serve` builds it (not started). `prefill_while_decoding`:
    --max-prefill-tokens-while-decoding (None: the default)."""
    settings = Settings(
        base_model=str(base_dir),
        adapters=[f"{n}={p}" for n, p in adapters.items()],
        device="cpu",
        max_input_tokens=2048,
        max_total_tokens=4096,
        max_new_tokens_limit=1024,
        max_batch_size=32,
        max_queued_requests=256,
        max_batch_tokens=max_batch_tokens,
        max_prefill_tokens_while_decoding=prefill_while_decoding,
        kv_cache_bytes=kv_cache_bytes,
        log_level="warning",
    )
    return build_engine(settings)


@dataclass
class Run:
    """One served batch: wall seconds (first submit to last finish), each request's tokens, and the engine
    steps that emitted tokens as (perf_counter, handle ids, KV blocks used, KV positions computed)."""

    wall: float = 0.0
    tokens: list[list[int]] = field(default_factory=list)
    steps: list[tuple[float, list[int], int, int]] = field(default_factory=list)


def record_steps(engine: Engine, run: Run) -> None:
    """Wrap the engine's emit stage (called once per step with the rows it completed) to log the step."""
    emit = Engine._emit

    def logged(rows: list[Any], picks: list[Any]) -> None:
        batch = engine._batch
        used = getattr(getattr(batch, "blocks", None), "pool", None)
        computed = sum(r.seq.computed for r in batch.rows) if used is not None else 0
        run.steps.append(
            (time.perf_counter(), [r.handle.id for r in rows], used.num_used if used else 0, computed)
        )
        emit(engine, rows, picks)

    engine._emit = logged  # type: ignore[method-assign]


async def start(engine: Engine) -> None:
    await engine.registry.start(preload=len(ADAPTERS))
    engine.start()


async def submit(
    engine: Engine, ids: list[int], adapter: str | None, new: int
) -> tuple[Any, asyncio.Task[list[int]]]:
    """Queue one greedy request (EOS ignored: exactly `new` tokens); returns its handle and a task that
    collects its token ids."""
    lease = await engine.registry.acquire(adapter)
    request = GenerationRequest(
        ids, adapter, SamplingParams(ignore_eos=True), max_new_tokens=new, lease=lease
    )
    handle = engine.submit_generate(request, asyncio.get_running_loop())

    async def collect() -> list[int]:
        out = []
        async for event in handle.events():
            if isinstance(event, TokenEvent):
                out.append(event.token_id)
            elif not isinstance(event, FinishEvent):
                raise RuntimeError(f"request failed: {event}")
        return out

    return handle, asyncio.create_task(collect())


async def serve(engine: Engine, prompts: list[list[int]], names: list[str | None], new: int) -> Run:
    """All prompts at once (concurrent clients), wait for every answer."""
    run = Run()
    record_steps(engine, run)
    t0 = time.perf_counter()
    tasks = [(await submit(engine, p, n, new))[1] for p, n in zip(prompts, names)]
    run.tokens = list(await asyncio.gather(*tasks))
    run.wall = time.perf_counter() - t0
    engine._emit = Engine._emit.__get__(engine)  # type: ignore[method-assign]
    return run
