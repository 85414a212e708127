"""The numbers of a run: percentiles, throughput, SLO attainment, the issue's goals, the markdown table.

Definitions (client-side, per run of one system on one trace):
- throughput: completed requests (every token received) / wall time (first send to last token, or to the
  deadline when requests were cut off); tokens/s likewise with the completed requests' output tokens;
- TTFT: first token's arrival - send; ITL: gaps between consecutive tokens (all gaps of all requests);
  TPOT: (last token - first token) / (tokens - 1) per request;
- percentiles: numpy's linear interpolation (`np.percentile(..., method="linear")`), None without data;
- SLO attainment: share of *all* requests of the trace (failed and cut-off ones count as misses) with
  TTFT <= the TTFT bound and TPOT <= the per-token bound (a one-token request has no TPOT: TTFT only).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .client import RequestResult

QUANTILES = (50, 90, 99)


@dataclass(frozen=True)
class Slo:
    ttft_s: float
    tpot_s: float


def percentiles(values: Iterable[float], qs: Sequence[int] = QUANTILES) -> dict[str, float | None]:
    """{"p50": …, "p90": …, "p99": …} (linear interpolation); None for each when there is no value."""
    data = np.asarray(list(values), dtype=np.float64)
    if data.size == 0:
        return {f"p{q}": None for q in qs}
    return {f"p{q}": float(np.percentile(data, q, method="linear")) for q in qs}


def meets_slo(result: RequestResult, slo: Slo) -> bool:
    if not result.ok or result.ttft_s is None or result.ttft_s > slo.ttft_s:
        return False
    tpot = result.tpot_s
    return tpot is None or tpot <= slo.tpot_s


def summarize(results: Sequence[RequestResult], wall_s: float, slo: Slo) -> dict[str, Any]:
    """One run's metrics (see the module docstring)."""
    ok = [r for r in results if r.ok]
    cut = any(r.error == "deadline" for r in results)
    last = max((r.token_s[-1] for r in ok), default=0.0)
    first = min((r.sent_s for r in results if r.sent_s >= 0), default=0.0)
    span = wall_s if cut or not ok else max(last - first, 1e-9)
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            kind = (r.error or "short output").split(":")[0]
            errors[kind] = errors.get(kind, 0) + 1
    return {
        "requests": len(results),
        "completed": len(ok),
        "errors": errors,
        "wall_s": span,
        "throughput_rps": len(ok) / span if span > 0 else 0.0,
        "tokens_per_s": sum(r.output_tokens for r in ok) / span if span > 0 else 0.0,
        "ttft_s": percentiles(r.ttft_s for r in ok if r.ttft_s is not None),
        "itl_s": percentiles(g for r in ok for g in r.itl_s),
        "tpot_s": percentiles(r.tpot_s for r in ok if r.tpot_s is not None),
        "slo_attainment": sum(meets_slo(r, slo) for r in results) / len(results) if results else 0.0,
    }


# -- goals ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """`system` at `setting` against `reference` at the same setting: `metric` ratio compared to `target`.

    `at_most` flips the comparison (a latency ratio must stay below the target).
    """

    text: str
    setting: str
    system: str
    reference: str
    metric: str
    target: float
    at_most: bool = False


def metric_value(summary: dict[str, Any], metric: str) -> float | None:
    """`throughput_rps` or a percentile path like `ttft_s.p99`."""
    value: Any = summary
    for part in metric.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return None if value is None else float(value)


def evaluate_goals(goals: Sequence[Goal], cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal with the measured ratio and whether it is met (None when a cell was not measured)."""
    by_key = {(c["setting"], c["system"]): c for c in cells if c.get("summary")}
    out = []
    for goal in goals:
        mine, ref = by_key.get((goal.setting, goal.system)), by_key.get((goal.setting, goal.reference))
        a = metric_value(mine["summary"], goal.metric) if mine else None
        b = metric_value(ref["summary"], goal.metric) if ref else None
        ratio = a / b if a is not None and b not in (None, 0.0) else None
        met = None if ratio is None else (ratio <= goal.target if goal.at_most else ratio >= goal.target)
        out.append({**goal.__dict__, "ratio": ratio, "met": met})
    return out


# -- markdown ---------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.0f}"


def markdown_table(cells: Sequence[dict[str, Any]]) -> str:
    """One row per measured cell: setting, system, throughput, latency percentiles, SLO, store, memory."""
    head = (
        "| setting | system | done | req/s | tok/s | TTFT p50/p90/p99 ms | ITL p50/p90/p99 ms | SLO | "
        "adapter loads (host/disk) | evictions (device/host) | peak RSS MiB |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for c in cells:
        s = c.get("summary")
        if not s:
            rows.append(f"| {c['setting']} | {c['system']} | skipped: {c.get('skipped', '?')} |||||||||\n")
            continue
        ttft, itl = s["ttft_s"], s["itl_s"]
        loads = c.get("store", {}).get("loads", {})
        evictions = c.get("store", {}).get("evictions", {})
        store = (
            f"{loads.get('host', 0):.0f}/{loads.get('disk', 0):.0f}" if loads else "-",
            f"{evictions.get('device', 0):.0f}/{evictions.get('host', 0):.0f}" if evictions else "-",
        )
        rss = c.get("memory", {}).get("peak_rss_bytes")
        rows.append(
            f"| {c['setting']} | {c['system']} | {s['completed']}/{s['requests']} | "
            f"{s['throughput_rps']:.2f} | {s['tokens_per_s']:.1f} | "
            f"{_ms(ttft['p50'])}/{_ms(ttft['p90'])}/{_ms(ttft['p99'])} | "
            f"{_ms(itl['p50'])}/{_ms(itl['p90'])}/{_ms(itl['p99'])} | {s['slo_attainment']:.0%} | "
            f"{store[0]} | {store[1]} | {'-' if rss is None else f'{rss / 2**20:.0f}'} |\n"
        )
    return head + "".join(rows)


def markdown_goals(evaluated: Sequence[dict[str, Any]]) -> str:
    lines = ["| goal | measured | target | met |", "|---|---|---|---|"]
    for g in evaluated:
        ratio = "-" if g["ratio"] is None else f"{g['ratio']:.2f}x"
        sign = "<=" if g["at_most"] else ">="
        met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
        lines.append(f"| {g['text']} | {ratio} | {sign} {g['target']}x | {met} |")
    return "\n".join(lines) + "\n"
