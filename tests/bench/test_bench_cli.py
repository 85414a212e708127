"""`swapyard bench` end to end: the micro preset runs the real servers (Swapyard with adapters and base-only,
Swapyard over the merged checkpoint, the PEFT baseline) and writes JSON, a table and PNG plots; s-lora-7b
builds its plan and refuses clearly on a machine without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.serving.cli import main
from bench.serving.presets import PRESETS, SYSTEMS
from bench.serving.runner import goals_of

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.e2e
def test_the_micro_preset_runs_every_system_and_writes_json_and_plots(tmp_path) -> None:
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "swapyard", "bench", "--preset", "micro", "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    cells = {c["system"]: c for c in result["cells"]}
    assert set(cells) == set(SYSTEMS)
    for system, cell in cells.items():
        summary = cell["summary"]
        assert summary["completed"] == summary["requests"] == 6, (system, summary["errors"])
        assert summary["throughput_rps"] > 0 and summary["ttft_s"]["p99"] is not None
        assert cell["memory"]["peak_rss_bytes"] > 0
        wanted = [r["max_new_tokens"] for r in cell["requests"]]
        assert [len(r["token_s"]) for r in cell["requests"]] == wanted  # no early EOS anywhere
    # the same trace everywhere; adapters only where the system takes them
    assert [r["adapter"] for r in cells["base-only"]["requests"]] == [None] * 6
    assert [r["adapter"] for r in cells["merged"]["requests"]] == [None] * 6
    adapters = [r["adapter"] for r in cells["swapyard"]["requests"]]
    assert all(a in {"a0000", "a0001", "a0002"} for a in adapters)
    assert [r["adapter"] for r in cells["peft-baseline"]["requests"]] == adapters
    assert set(cells["swapyard"]["store"]) == {"loads", "evictions", "hits"}
    assert sum(cells["swapyard"]["store"]["hits"].values()) == 6  # one acquire per adapter request
    assert [g["ratio"] is not None for g in result["goals"]] == [True] * len(goals_of(PRESETS["micro"]))
    assert "| N=3 0.8x | peft-baseline | 6/6 |" in (out / "results.md").read_text()
    for name in ("throughput_vs_adapters.png", "latency_cdf.png", "slo_vs_rate.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    assert "| setting | system |" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the preset would run")
def test_s_lora_7b_refuses_clearly_without_a_gpu(capsys, tmp_path) -> None:
    assert main(["--preset", "s-lora-7b", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "preset s-lora-7b needs a CUDA GPU" in err and "use --preset cpu-small" in err
    assert not (tmp_path / "out").exists()


def test_s_lora_7b_builds_its_plan(capsys) -> None:
    assert main(["--preset", "s-lora-7b", "--plan-only"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["preset"]["base"]["hidden_size"] == 4096 and plan["preset"]["base"]["num_hidden_layers"] == 32
    assert 6.5e9 < plan["needs"]["base_bytes"] / 2 < 7.0e9  # Llama-7B's parameters, in bfloat16
    # 1,000 adapters of ranks 8/16/32/64 on q_proj and v_proj: (4096 + 4096) x 2 x 32 layers per unit of rank
    assert plan["needs"]["adapter_files_bytes"] == 2 * 8192 * 2 * 32 * 250 * (8 + 16 + 32 + 64)
    assert [s["n_adapters"] for s in plan["preset"]["settings"]][:2] == [100, 1000]


def test_bad_flags_are_argparse_errors(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--preset", "nope"])
    assert exit_.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_measures_what_its_goals_compare(name: str) -> None:
    preset = PRESETS[name]
    measured = {(s.label, system) for s in preset.settings for system in s.systems}
    for goal in goals_of(preset):
        assert (goal.setting, goal.system) in measured and (goal.setting, goal.reference) in measured
    for setting in preset.settings:
        assert set(setting.systems) <= set(SYSTEMS)
        if "peft-baseline" in setting.systems:  # the baseline loads only the first peft_adapters
            assert setting.n_adapters <= preset.peft_adapters


def test_from_results_redoes_goals_table_and_plots_without_measuring(tmp_path, capsys) -> None:
    from test_plots import cell  # the plots' synthetic cells

    cells = []
    for system, scale in (("swapyard", 0.05), ("base-only", 0.04), ("merged", 0.04), ("peft-baseline", 0.2)):
        c = cell(system, 3, 0.8, scale)
        cells.append({**c, "setting": "N=3 0.8x"})
    path = tmp_path / "results.json"
    path.write_text(
        json.dumps(
            {
                "preset": "micro",
                "command": "x",
                "started_utc": "t",
                "cells": cells,
                "machine": {"platform": "p", "cpus": 2, "torch": "t"},
            }
        )
    )
    assert main(["--preset", "micro", "--from-results", str(path)]) == 0
    result = json.loads(path.read_text())
    assert [g["met"] is not None for g in result["goals"]] == [True] * 4
    assert "| N=3 0.8x | peft-baseline | 8/8 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "latency_cdf.png").read_bytes()[:8] == PNG_SIGNATURE
    assert main(["--preset", "cpu-small", "--from-results", str(path)]) == 2
    assert "is a 'micro' run; pass --preset micro" in capsys.readouterr().err
