"""The plots are written, as PNG files, from the runner's cells (bench/serving/plots.py)."""

from __future__ import annotations

from bench.serving.client import RequestResult
from bench.serving.plots import write_plots
from bench.serving.report import Slo, summarize

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def cell(system: str, n: int, factor: float, scale: float) -> dict:
    results = [RequestResult(i, None, 3, i * 0.5, [i * 0.5 + scale * k for k in (1, 2, 3)]) for i in range(8)]
    return {
        "system": system,
        "n_adapters": n,
        "rate_factor": factor,
        "rate": 2.0 * factor,
        "mode": "open",
        "summary": summarize(results, 5.0, Slo(0.15, 0.1)),
        "requests": [r.to_json() for r in results],
    }


def test_every_plot_is_written_as_a_png(tmp_path) -> None:
    cells = [
        cell("swapyard", 10, 0.8, 0.05),
        cell("swapyard", 100, 0.8, 0.06),
        cell("swapyard", 1000, 0.8, 0.08),
        cell("base-only", 100, 0.8, 0.04),
        cell("merged", 100, 0.8, 0.04),
        cell("peft-baseline", 100, 0.8, 0.2),
        cell("swapyard", 100, 0.4, 0.05),
        cell("base-only", 100, 0.4, 0.04),
        {"system": "swapyard", "n_adapters": 100, "rate_factor": 1.2, "rate": 2.4, "skipped": "time budget"},
    ]
    written = write_plots(cells, tmp_path / "plots", headline_n=100, headline_factor=0.8)
    names = sorted(p.name for p in written)
    assert names == ["latency_cdf.png", "slo_vs_rate.png", "throughput_vs_adapters.png"]
    for path in written:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        assert path.stat().st_size > 5_000  # drawn, not an empty canvas


def test_without_measurements_no_plot_is_written(tmp_path) -> None:
    skipped = [{"system": "swapyard", "n_adapters": 100, "rate_factor": 0.8, "rate": 1.0, "skipped": "x"}]
    assert write_plots(skipped, tmp_path, headline_n=100, headline_factor=0.8) == []
    assert list(tmp_path.iterdir()) == []
