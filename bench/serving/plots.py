"""PNG plots of a run (matplotlib, Agg backend, small files):

- `throughput_vs_adapters.png`: Swapyard's throughput against the number of adapters at the headline arrival
  rate, with base-only, merged and the PEFT baseline at the same rate as reference marks;
- `latency_cdf.png`: time to first token and inter-token latency CDFs of every system at the headline setting
  (and Swapyard with the most adapters);
- `slo_vs_rate.png`: SLO attainment against the arrival rate, per system, at the headline number of adapters.

Cells are the runner's dicts: `system`, `n_adapters`, `rate`, `rate_factor`, `summary`, `requests` (the
per-request JSON of client.RequestResult).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

STYLE = {
    "swapyard": ("tab:blue", "o"),
    "base-only": ("tab:gray", "s"),
    "merged": ("tab:green", "^"),
    "peft-baseline": ("tab:red", "x"),
}


def _measured(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in cells if c.get("summary") and c.get("mode", "open") == "open"]


def throughput_vs_adapters(
    cells: Sequence[dict[str, Any]], headline_factor: float, path: Path
) -> Path | None:
    at_rate = [c for c in _measured(cells) if c["rate_factor"] == headline_factor]
    ours = sorted((c for c in at_rate if c["system"] == "swapyard"), key=lambda c: c["n_adapters"])
    if not ours:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=80)
    ax.plot(
        [c["n_adapters"] for c in ours],
        [c["summary"]["throughput_rps"] for c in ours],
        marker="o",
        color=STYLE["swapyard"][0],
        label="Swapyard (adapters)",
    )
    for system in ("base-only", "merged", "peft-baseline"):
        points = [c for c in at_rate if c["system"] == system]
        if not points:
            continue
        color, marker = STYLE[system]
        if system == "peft-baseline":
            ax.scatter(
                [c["n_adapters"] for c in points],
                [c["summary"]["throughput_rps"] for c in points],
                color=color,
                marker=marker,
                s=60,
                label="PEFT baseline (transformers + PEFT)",
            )
        else:
            mean = sum(c["summary"]["throughput_rps"] for c in points) / len(points)
            ax.axhline(mean, color=color, linestyle="--", label=f"{system} (no adapter)")
    offered = ours[0].get("offered_rps") or ours[0]["rate"]
    ax.axhline(offered, color="black", linestyle=":", linewidth=1, label="offered load (this trace)")
    ax.set_xscale("log")
    ax.set_xlabel("adapters")
    ax.set_ylabel("throughput (requests/s)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"throughput at {headline_factor:g}x base-only capacity")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _cdf(ax: Any, values: list[float], label: str, color: str) -> None:
    if not values:
        return
    xs = sorted(values)
    ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=label, color=color)


def latency_cdfs(
    cells: Sequence[dict[str, Any]], headline_n: int, headline_factor: float, path: Path
) -> Path | None:
    picked = [
        c for c in _measured(cells) if c["rate_factor"] == headline_factor and c["n_adapters"] == headline_n
    ]
    most = max((c["n_adapters"] for c in _measured(cells) if c["system"] == "swapyard"), default=None)
    if most is not None and most != headline_n:
        picked += [
            c
            for c in _measured(cells)
            if c["system"] == "swapyard" and c["n_adapters"] == most and c["rate_factor"] == headline_factor
        ]
    if not picked:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=80)
    shades = ["tab:blue", "tab:purple"]
    for c in picked:
        color = STYLE.get(c["system"], ("black", ""))[0]
        if c["system"] == "swapyard":
            color = shades[0] if c["n_adapters"] == headline_n else shades[1]
        label = c["system"] + (f" ({c['n_adapters']} adapters)" if c["system"] == "swapyard" else "")
        done = [r for r in c["requests"] if r["error"] is None and len(r["token_s"]) == r["max_new_tokens"]]
        _cdf(left, [r["token_s"][0] - r["sent_s"] for r in done], label, color)
        gaps = [b - a for r in done for a, b in zip(r["token_s"], r["token_s"][1:])]
        _cdf(right, gaps, label, color)
    left.set_xlabel("time to first token (s)")
    right.set_xlabel("inter-token latency (s)")
    for ax in (left, right):
        ax.set_ylabel("share of requests" if ax is left else "share of gaps")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    fig.suptitle(f"latency CDFs, {headline_n} adapters, {headline_factor:g}x base-only capacity", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def slo_vs_rate(cells: Sequence[dict[str, Any]], headline_n: int, path: Path) -> Path | None:
    at_n = [c for c in _measured(cells) if c["n_adapters"] == headline_n]
    systems = sorted({c["system"] for c in at_n})
    if not at_n:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=80)
    for system in systems:
        points = sorted((c for c in at_n if c["system"] == system), key=lambda c: c["rate"])
        color, marker = STYLE.get(system, ("black", "."))
        ax.plot(
            [c["rate"] for c in points],
            [c["summary"]["slo_attainment"] for c in points],
            marker=marker,
            color=color,
            label=system,
        )
    ax.set_xlabel("arrival rate (requests/s)")
    ax.set_ylabel("SLO attainment")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"SLO attainment, {headline_n} adapters")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_plots(
    cells: Sequence[dict[str, Any]], out_dir: Path, headline_n: int, headline_factor: float
) -> list[Path]:
    """Every plot that has data; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        throughput_vs_adapters(cells, headline_factor, out_dir / "throughput_vs_adapters.png"),
        latency_cdfs(cells, headline_n, headline_factor, out_dir / "latency_cdf.png"),
        slo_vs_rate(cells, headline_n, out_dir / "slo_vs_rate.png"),
    ]
    return [p for p in written if p is not None]
