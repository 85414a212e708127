"""Assemble the sections' results (`RESULTS_DIR/<section>.json`) into `RESULTS_DIR/<card>.md`: a summary of
every section's status, the issue's goals marked met / not met, then each section's tables. A section that
wrote no result (it crashed or ran out of time) is reported with the tail of its log."""

from __future__ import annotations

import re
import time
from pathlib import Path

from bench.device.common import Goal, Section

SECTIONS = {
    "env": "Machine and dependencies",
    "tests": "GPU tests (compiled kernels, per-test timeout)",
    "kernels": "LoRA kernels against copy bandwidth",
    "decode": "Decode step at Llama-3-8B geometry",
    "serving": "Serving throughput: S-LoRA's setting against base-only",
    "graphs": "Decode step: CUDA graph against eager",
}

GOAL_SECTIONS = {
    "kernels": "kernels >= 70% of copy bandwidth at batch >= 64",
    "decode": "decode step with 64 distinct rank-16 adapters <= 1.15x base-only",
    "serving": "S-LoRA setting >= 0.9x base-only throughput",
}


def card_slug(out: Path) -> str:
    card = (out / "card.txt").read_text().strip() if (out / "card.txt").exists() else "unknown-card"
    return re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-") or "unknown-card"


def load(out: Path, name: str, outcome: str) -> Section:
    path = out / f"{name}.json"
    if path.exists():
        return Section.load(path)
    log = out / f"{name}.log"
    tail = log.read_text(errors="replace").splitlines()[-40:] if log.exists() else ["(no log)"]
    section = Section(name, SECTIONS.get(name, name), status=outcome or "failed")
    section.lines = ["no result: the section's last log lines:", "```", *tail, "```"]
    return section


def write(out: Path, outcomes: dict[str, str], smoke: bool, seconds: float) -> Path:
    """`outcomes`: section -> '' (it exited normally) or 'timed out' / 'failed (exit N)'."""
    sections = [load(out, name, outcomes.get(name, "")) for name in outcomes]
    card = (out / "card.txt").read_text().strip() if (out / "card.txt").exists() else "unknown card"
    lines = [
        f"# Device check: {card}",
        "",
        f"`bash bench/device_check.sh {out}{' --smoke-cpu' if smoke else ''}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {seconds:.0f} s.",
    ]
    if smoke:
        lines += [
            "",
            "**Smoke run on the CPU**: tiny shapes; it checks the script, its numbers mean nothing.",
        ]
    lines += ["", "| section | status |", "|---|---|"]
    lines += [f"| {s.title} | {s.status} |" for s in sections]
    lines += ["", "## Goals (issue 18)", "", "| goal | measured | target | met |", "|---|---|---|---|"]
    goals = [g for s in sections for g in s.goals]
    for s in sections:  # a goal's section that measured nothing still gets its row
        if s.name in GOAL_SECTIONS and not s.goals:
            goals.append(Goal(GOAL_SECTIONS[s.name], f"not measured ({s.status})", "", None))
    for g in goals:
        met = "not measured" if g.met is None else ("yes" if g.met else "**no**")
        lines.append(f"| {g.goal} | {g.measured} | {g.target} | {met} |")
    for s in sections:
        lines += ["", f"## {s.title}", "", f"status: {s.status}", "", *s.lines]
    path = out / f"{card_slug(out)}.md"
    path.write_text("\n".join(lines) + "\n")
    return path
