"""Section `env`: the machine (card, versions) and which of the project's dependencies it lacks.

The device machine has torch, triton and transformers but no network and no .venv; sections that need a
missing module skip with a line naming it. Writes `card.txt` (the card's name) for the report's file name.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys

from bench.device.common import Section, section_args

# module -> what needs it (runtime dependencies of pyproject.toml and the test tools the check uses)
MODULES = {
    "torch": "everything",
    "triton": "the compiled kernels",
    "transformers": "the models (decode, serving, graphs)",
    "safetensors": "adapter files (serving)",
    "tokenizers": "the word-level tokenizer (serving)",
    "huggingface_hub": "adapters_core imports",
    "pydantic": "server settings (serving)",
    "pydantic_settings": "server settings (serving)",
    "fastapi": "server imports (serving)",
    "prometheus_client": "server metrics (serving)",
    "llguidance": "server structured output (serving)",
    "limits": "server rate limits (serving)",
    "yaml": "adapters_core configs",
    "numpy": "triton's interpreter, tests",
    "PIL": "server image inputs (serving)",
    "pytest": "the GPU tests",
    "pytest_timeout": "per-test timeouts (else a SIGALRM plugin of ours)",
    "peft": "nothing here (test oracle only)",
}


def version(module: str) -> str:
    names = {"yaml": "pyyaml", "PIL": "pillow", "pytest_timeout": "pytest-timeout"}
    try:
        return importlib.metadata.version(names.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return "?"


def main(argv: list[str] | None = None) -> None:
    args = section_args(__doc__, argv)
    section = Section("env", "Machine and dependencies")
    card = "cpu-smoke"
    try:
        import torch

        if not args.smoke_cpu:
            if not torch.cuda.is_available():
                section.status = "failed"
                section.add(
                    f"no CUDA device (torch {torch.__version__}): run with --smoke-cpu on a CPU machine"
                )
            else:
                props = torch.cuda.get_device_properties(0)
                card = torch.cuda.get_device_name(0)
                section.add(
                    f"card: {card}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, "
                    f"L2 {getattr(props, 'L2_cache_size', 0) / 2**20:.0f} MiB; CUDA {torch.version.cuda}"
                )
    finally:
        (args.out / "card.txt").write_text(card + "\n")
    section.add(f"python {platform.python_version()} ({sys.executable}); smoke: {args.smoke_cpu}", "")
    section.add("| module | version | needed for |", "|---|---|---|")
    missing = []
    for module, why in MODULES.items():
        present = importlib.util.find_spec(module) is not None
        missing += [] if present else [module]
        section.add(f"| {module} | {version(module) if present else '**missing**'} | {why} |")
    section.add("", f"missing: {', '.join(missing) or 'none'}")
    section.save(args.out)


if __name__ == "__main__":
    main()
