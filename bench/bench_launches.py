"""Device launches of the LoRA ops in one decode step, with and without sibling fusion (issue 18).

Builds a Llama from a config (default 32 layers, tiny widths: launch counts do not depend on widths), adds
all-linear LoRA adapters, runs one paged prefill step and counts what one paged decode step launches inside the
LoRA ops:
Triton kernels by name (memsets and other torch ops by aten name, counted by a dispatch mode, are launches
too). Runs the Triton backend: on CUDA when there is one, else under TRITON_INTERPRET=1 (set here).

    PYTHONPATH=$PWD .venv/bin/python bench/bench_launches.py            # 32 layers, batch 8, 4 adapters
    PYTHONPATH=$PWD .venv/bin/python bench/bench_launches.py --layers 2 --batch 4

Measured (interpreter, defaults, before the no-split-K merge): 672 launches unfused (224 memsets, 224
shrinks, 224 expands: 7 modules x 32 layers x 3) -> 480 fused. Without split-K nothing zeroes `u` (kernels/
triton_lora.py), so per layer 14 unfused (7 shrinks, 7 expands) -> 11 fused (q/k/v and gate/up share one
multi-slice shrink per block): measured 28 -> 22 at `--layers 2 --batch 4`, i.e. 448 -> 352 at 32 layers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported
os.environ["SWAPYARD_KERNELS"] = "triton"

import peft
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig, LlamaForCausalLM

import adapters_core.multi.fused as fused
import adapters_core.multi.layers as layers
from adapters_core.multi import MultiAdapterModel
from adapters_core.paged import SeqChunk, StepPlan

# aten ops that launch nothing on a device (metadata, views, allocation without a fill)
NO_LAUNCH = {
    "empty", "empty_strided", "view", "_unsafe_view", "as_strided", "select", "slice", "t", "transpose",
    "detach", "alias", "reshape", "expand", "unsqueeze", "squeeze", "lift_fresh", "unbind", "split",
}  # fmt: skip


class _Counter(TorchDispatchMode):
    """Counts aten ops while `depth` > 0 (inside a LoRA entry point)."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket.__name__
        if self.depth and name not in NO_LAUNCH:
            self.ops["torch." + name] += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def counting() -> Iterator[_Counter]:
    """Count LoRA launches: wrap the entry points the layers call and every Triton kernel's launch."""
    import triton.runtime.jit as jit

    counter = _Counter()
    patches: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        real = getattr(owner, name)
        patches.append((owner, name, real))
        setattr(owner, name, make(real))

    def entry(real: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            counter.depth += 1
            try:
                return real(*args, **kwargs)
            finally:
                counter.depth -= 1

        return wrapped

    def launch(real: Any) -> Any:
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            counter.ops["triton." + (getattr(self, "__name__", None) or self.fn.__name__)] += 1
            depth, counter.depth = counter.depth, 0  # the interpreter's own torch ops are not launches
            try:
                return real(self, *args, **kwargs)
            finally:
                counter.depth = depth

        return run

    patch(layers, "lora_apply", entry)
    patch(fused, "lora_expand", entry)
    patch(fused, "lora_shrink_slices", entry)
    if os.environ.get("TRITON_INTERPRET") == "1":
        from triton.runtime.interpreter import InterpretedFunction

        patch(InterpretedFunction, "run", launch)
    else:
        patch(jit.JITFunction, "run", launch)
    try:
        with counter:
            yield counter
    finally:
        for owner, name, real in reversed(patches):
            setattr(owner, name, real)


def build(args: argparse.Namespace, workdir: str) -> tuple[MultiAdapterModel, list[str | None]]:
    config = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=args.layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    base = LlamaForCausalLM(config).eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    multi = MultiAdapterModel(LlamaForCausalLM(config).eval().to(device), max_adapters=args.adapters)
    for i in range(args.adapters):
        lora = peft.LoraConfig(r=args.rank, target_modules="all-linear", task_type="CAUSAL_LM")
        pm = peft.get_peft_model(base, lora, adapter_name=f"a{i}")
        path = os.path.join(workdir, f"a{i}")
        pm.save_pretrained(path)
        multi.add(f"a{i}", os.path.join(path, f"a{i}"))  # PEFT saves a named adapter in a subfolder
        base = pm.unload()
    names: list[str | None] = [f"a{i % args.adapters}" for i in range(args.batch)]
    return multi, names


def decode_launches(multi: MultiAdapterModel, names: list[str | None], fuse: bool) -> Counter[str]:
    for g in multi._sibling_groups:
        g.enabled, g._stash = fuse, None
    rows = len(names)
    multi.init_kv_cache(multi.reserved_blocks + rows, block_size=4)  # one block per row: 3 prompt tokens + 1
    tables = [[multi.reserved_blocks + r] for r in range(rows)]
    with torch.no_grad():
        logits = multi.paged_step(
            StepPlan([SeqChunk(r, names[r], [3, 4, 5], 0, tables[r]) for r in range(rows)])
        )
        nxt = logits.argmax(-1).tolist()
        decode = StepPlan([SeqChunk(r, names[r], [nxt[r]], 3, tables[r]) for r in range(rows)])
        with counting() as counter:
            multi.paged_step(decode)
    return counter.ops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        multi, names = build(args, workdir)
        before = decode_launches(multi, names, fuse=False)
        after = decode_launches(multi, names, fuse=True)
    print(f"# LoRA launches per decode step: Llama, {args.layers} layers, all-linear rank {args.rank}, "
          f"batch {args.batch} over {args.adapters} adapters ({'CUDA' if torch.cuda.is_available() else 'interpreter'})")  # fmt: skip
    print(f"{'op':<40} {'unfused':>8} {'fused':>8}")
    for op in sorted(set(before) | set(after)):
        print(f"{op:<40} {before[op]:>8} {after[op]:>8}")
    print(f"{'total':<40} {sum(before.values()):>8} {sum(after.values()):>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
