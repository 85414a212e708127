"""`swapyard bench`: the serving benchmark (S-LoRA's workload) against base-only, merged and a PEFT server.

    swapyard bench --preset cpu-small [--out DIR] [--seed N] [--alpha A] [--cv CV] [--prompts-file F.jsonl]
    swapyard bench --preset s-lora-7b --plan-only    # what it would run and what it needs, nothing run
    swapyard bench --preset cpu-small --from-results DIR/results.json   # goals, table, plots again

Writes DIR/results.json (every request's token times), DIR/results.md (the table and the goals) and PNG
plots; prints the table at the end. Exit status: 0 done, 2 bad flags or a machine that cannot run the
preset (the message says what is missing), 1 a server that failed (the message carries its log).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .plots import write_plots
from .presets import PRESETS, Preset, check_machine, plan_bytes
from .report import evaluate_goals
from .runner import Options, goals_of, render_markdown, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swapyard bench",
        description="Serving benchmark: Swapyard with N adapters vs base-only, the base with one adapter "
        "merged, and a PEFT baseline server; S-LoRA's workload (power-law adapter popularity, Gamma arrivals).",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small", help="default: cpu-small")
    parser.add_argument("--out", type=Path, help="results directory (default: bench_results/PRESET)")
    parser.add_argument(
        "--workdir", type=Path, help="where the base and adapters are written (default: a temp dir, removed)"
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temp dir (servers' logs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request traces (default 0)")
    parser.add_argument("--alpha", type=float, help="power-law exponent of adapter popularity (1 = uniform)")
    parser.add_argument(
        "--cv", type=float, help="coefficient of variation of the Gamma arrivals (1 = Poisson)"
    )
    parser.add_argument("--prompts-file", help='JSONL prompts: {"prompt": str, "output_len": int?} per line')
    parser.add_argument("--slo-ttft-s", type=float, help="TTFT bound of the SLO (default: 2x base-only p50)")
    parser.add_argument(
        "--slo-tpot-s", type=float, help="per-token bound of the SLO (default: 1.5x base-only p50)"
    )
    parser.add_argument("--time-budget-s", type=float, help="skip the settings that would not fit in this")
    parser.add_argument("--server-threads", type=int, help="torch threads of each server process")
    parser.add_argument(
        "--plan-only", action="store_true", help="print the plan and the machine check, run nothing"
    )
    parser.add_argument(
        "--from-results",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: redo the goals, results.md and the plots of an earlier run (next to the file)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[2:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    preset = PRESETS[args.preset]
    overrides = {
        "alpha": args.alpha,
        "cv": args.cv,
        "time_budget_s": args.time_budget_s,
        "server_threads": args.server_threads,
    }
    try:
        preset = dataclasses.replace(preset, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        print(f"swapyard bench: {exc}", file=sys.stderr)
        return 2
    if args.from_results is not None:
        return rerender(args.from_results, preset)
    out = args.out or Path("bench_results") / preset.name
    workdir = args.workdir
    problems = check_machine(preset, workdir or Path(_tempdir()))
    if args.plan_only:
        plan = {
            "preset": dataclasses.asdict(preset),
            "needs": plan_bytes(preset),
            "machine_problems": problems,
        }
        print(json.dumps(plan, indent=1, default=str))
        return 0
    if problems:
        for problem in problems:
            print(f"swapyard bench: {problem}", file=sys.stderr)
        return 2
    options = Options(
        out_dir=out,
        workdir=workdir,
        keep_workdir=args.keep_workdir,
        seed=args.seed,
        slo_ttft_s=args.slo_ttft_s,
        slo_tpot_s=args.slo_tpot_s,
        prompts_file=args.prompts_file,
        progress=not args.no_progress,
        command=shlex.join(["swapyard", "bench", *argv]),
    )
    # SIGTERM (a background job cannot be interrupted with Ctrl-C) unwinds like an error, so the servers stop
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = run(preset, options)
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"swapyard bench: {exc}", file=sys.stderr)
        return 1
    print(render_markdown(result))
    print(f"results: {out / 'results.json'}, {out / 'results.md'}")
    return 0


def rerender(path: Path, preset: Preset) -> int:
    """The goals, results.md and plots of a results.json again (e.g. after the report code changed)."""
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"swapyard bench: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    if result.get("preset") != preset.name:
        print(
            f"swapyard bench: {path} is a {result.get('preset')!r} run; pass --preset {result.get('preset')}",
            file=sys.stderr,
        )
        return 2
    out = path.parent
    result["goals"] = evaluate_goals(goals_of(preset), result["cells"])
    plots = write_plots(result["cells"], out, preset.headline_adapters, preset.headline_factor)
    result["plots"] = [str(p) for p in plots]
    path.write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(render_markdown(result))
    print(render_markdown(result))
    return 0


def _tempdir() -> str:
    import tempfile

    return tempfile.gettempdir()
