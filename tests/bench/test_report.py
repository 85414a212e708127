"""The report's math on fixed data (bench/serving/report.py): percentiles, throughput, latencies, SLO
attainment, the goals and the table."""

from __future__ import annotations

import pytest

from bench.serving.client import RequestResult
from bench.serving.report import (
    Goal,
    Slo,
    evaluate_goals,
    markdown_goals,
    markdown_table,
    percentiles,
    summarize,
)


def test_percentiles_interpolate_linearly() -> None:
    values = [float(v) for v in range(1, 101)]  # 1 … 100
    assert percentiles(values) == pytest.approx({"p50": 50.5, "p90": 90.1, "p99": 99.01})
    assert percentiles([3.0]) == {"p50": 3.0, "p90": 3.0, "p99": 3.0}
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None}
    assert percentiles([4.0, 0.0, 2.0], qs=(0, 50, 100)) == {"p0": 0.0, "p50": 2.0, "p100": 4.0}


def result(
    index: int, sent: float, tokens: list[float], error: str | None = None, budget=None
) -> RequestResult:
    return RequestResult(index, "a0000", budget or len(tokens), sent, tokens, error)


RESULTS = [
    result(0, 0.0, [0.5, 0.6, 0.7]),  # TTFT 0.5, gaps 0.1 0.1, TPOT 0.1
    result(1, 1.0, [1.2, 1.5, 1.8, 2.1]),  # TTFT 0.2, gaps 0.3 x3, TPOT 0.3
    result(2, 2.0, [3.0]),  # TTFT 1.0, one token: no TPOT
    result(3, 2.5, [2.6], error="HTTP 503: busy", budget=4),  # failed
    result(4, 3.0, [3.1, 3.2], budget=5),  # stream ended early: not completed
]


def test_summarize_counts_only_completed_requests_and_every_request_for_the_slo() -> None:
    s = summarize(RESULTS, wall_s=10.0, slo=Slo(ttft_s=0.6, tpot_s=0.2))
    assert s["requests"] == 5 and s["completed"] == 3
    assert s["errors"] == {"HTTP 503": 1, "short output": 1}
    assert s["wall_s"] == pytest.approx(3.0)  # first send (0.0) to last token of a completed request (3.0)
    assert s["throughput_rps"] == pytest.approx(3 / 3.0)
    assert s["tokens_per_s"] == pytest.approx((3 + 4 + 1) / 3.0)
    assert s["ttft_s"] == pytest.approx(percentiles([0.5, 0.2, 1.0]))
    assert s["itl_s"] == pytest.approx(percentiles([0.1, 0.1, 0.3, 0.3, 0.3]))
    assert s["tpot_s"] == pytest.approx(percentiles([0.1, 0.3]))
    # only request 0 meets both bounds (1: TPOT 0.3 > 0.2; 2: TTFT 1.0 > 0.6; 3, 4: not completed)
    assert s["slo_attainment"] == pytest.approx(1 / 5)
    assert summarize(RESULTS, 10.0, Slo(ttft_s=1.0, tpot_s=0.31))["slo_attainment"] == pytest.approx(3 / 5)


def test_a_run_cut_off_at_its_deadline_is_measured_over_its_whole_wall_time() -> None:
    cut = [*RESULTS[:2], RequestResult(9, None, 4, -1.0, error="deadline")]
    s = summarize(cut, wall_s=8.0, slo=Slo(1.0, 1.0))
    assert s["wall_s"] == 8.0 and s["throughput_rps"] == pytest.approx(2 / 8.0)
    assert s["errors"] == {"deadline": 1}


def cell(system: str, setting: str, rps: float, ttft_p99: float) -> dict:
    return {
        "setting": setting,
        "system": system,
        "summary": {
            **summarize(RESULTS[:3], 3.0, Slo(1, 1)),
            "throughput_rps": rps,
            "ttft_s": {"p50": 0.1, "p90": 0.2, "p99": ttft_p99},
        },
        "store": {"loads": {"host": 3.0, "disk": 7.0}, "evictions": {"device": 9.0, "host": 1.0}},
        "memory": {"peak_rss_bytes": 300 << 20},
    }


def test_goals_compare_ratios_in_the_right_direction() -> None:
    cells = [
        cell("swapyard", "N=100", 9.0, 0.3),
        cell("base-only", "N=100", 10.0, 0.1),
        cell("peft-baseline", "N=100", 2.0, 1.0),
        {"setting": "N=1000", "system": "swapyard", "skipped": "time budget"},
    ]
    goals = [
        Goal("vs base", "N=100", "swapyard", "base-only", "throughput_rps", 0.9),
        Goal("vs peft", "N=100", "swapyard", "peft-baseline", "throughput_rps", 5.0),
        Goal("ttft", "N=100", "swapyard", "base-only", "ttft_s.p99", 2.0, at_most=True),
        Goal("1000", "N=1000", "swapyard", "base-only", "throughput_rps", 0.8),
    ]
    got = {g["text"]: (g["ratio"], g["met"]) for g in evaluate_goals(goals, cells)}
    assert got["vs base"] == (pytest.approx(0.9), True)
    assert got["vs peft"] == (pytest.approx(4.5), False)
    assert got["ttft"] == (pytest.approx(3.0), False)
    assert got["1000"] == (None, None)
    table = markdown_goals(evaluate_goals(goals, cells))
    assert "| vs peft | 4.50x | >= 5.0x | **no** |" in table
    assert "| ttft | 3.00x | <= 2.0x | **no** |" in table
    assert "| 1000 | - | >= 0.8x | not measured |" in table


def test_the_table_has_a_row_per_cell_with_its_numbers() -> None:
    table = markdown_table(
        [
            cell("swapyard", "N=100 0.8x", 9.0, 0.3),
            {"setting": "N=1000 0.8x", "system": "swapyard", "skipped": "time budget"},
        ]
    )
    rows = table.strip().splitlines()
    assert len(rows) == 4
    assert rows[2].startswith("| N=100 0.8x | swapyard | 3/3 | 9.00 |")
    assert "| 100/200/300 |" in rows[2]  # TTFT p50/p90/p99 in ms
    assert "| 3/7 | 9/1 | 300 |" in rows[2]  # loads host/disk, evictions device/host, peak RSS MiB
    assert "skipped: time budget" in rows[3]
