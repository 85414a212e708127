"""bench/device_check.sh (issue 18): the smoke run on the CPU writes a results file with every section and
the goals; the report, the kernel classes and the test selection behave as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.device import report, tests
from bench.device.common import Goal, Section
from bench.device.decode import classify

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smoke_run_writes_every_section_and_the_goals(tmp_path: Path) -> None:
    """~1 minute on an idle 2-core machine, up to ~3 under heavy load: marked slow."""
    out = tmp_path / "results"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", "bench/device_check.sh", str(out), "--smoke-cpu"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = (out / "cpu-smoke.md").read_text()
    for title in report.SECTIONS.values():
        assert f"| {title} | ok |" in text
        assert f"## {title}\n\nstatus: ok" in text
    goals = text.split("## Goals (issue 18)")[1].split("\n## ")[0]
    assert goals.count("\n| ") == 4  # header + kernels, decode, serving
    # each section's own table made it in, with rows
    assert "| 64 -> 16 | 4 | bgmv |" in text and "| 16 -> 64 | 4 | sgmv |" in text
    assert "| 8 | 2 |" in text and "| 4 | 8 |" in text  # decode: 8 rows over 2 adapters, 4 rows distinct
    assert "| 2 | 100 adapters | 8 | 4 |" in text  # serving: the second alternation ran
    assert "| 4 | " in text.split("## Decode step: CUDA graph against eager")[1]
    assert "0 passed, 0 failed, 0 errors" in text  # the GPU tests were collected (and skip on the CPU)
    for name in report.SECTIONS:
        assert (out / f"{name}.json").exists() and (out / f"{name}.log").exists()


def test_usage_error_without_a_results_dir() -> None:
    proc = subprocess.run(["bash", "bench/device_check.sh"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "usage: bash bench/device_check.sh RESULTS_DIR" in proc.stderr


def test_report_names_a_section_that_left_no_result_and_its_unmeasured_goal(tmp_path: Path) -> None:
    (tmp_path / "card.txt").write_text("NVIDIA H200\n")
    Section("env", "Machine and dependencies", lines=["card: H200"]).save(tmp_path)
    kernels = Section("kernels", "LoRA kernels against copy bandwidth")
    kernels.goals.append(Goal("kernels vs copy", "71%", ">= 70%", True))
    kernels.save(tmp_path)
    (tmp_path / "decode.log").write_text("step 1\nCUDA error: an illegal memory access was encountered\n")
    path = report.write(tmp_path, {"env": "", "kernels": "", "decode": "timed out after 80 s"}, False, 9.0)
    assert path.name == "nvidia-h200.md"
    text = path.read_text()
    assert "| Decode step at Llama-3-8B geometry | timed out after 80 s |" in text
    assert "| kernels vs copy | 71% | >= 70% | yes |" in text
    assert (
        f"| {report.GOAL_SECTIONS['decode']} | not measured (timed out after 80 s) |  | not measured |"
        in text
    )
    assert "CUDA error: an illegal memory access was encountered" in text  # the log's tail


@pytest.mark.parametrize(
    ("kernel", "kind"),
    [
        ("_bgmv_shrink_kernel", "LoRA"),
        ("_sgmv_expand_kernel", "LoRA"),
        ("nvjet_tst_128x64_64x8_2x1_v_bz_TNT", "GEMM"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "GEMM"),
        (
            "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 64>>(Flash_fwd_params)",
            "attention",
        ),
        ("void at::native::(anonymous namespace)::indexSelectLargeIndex<c10::BFloat16, long>(...)", "KV"),
        ("aten::mm", "GEMM"),
        ("void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<float>(...)", "other"),
    ],
)
def test_kernel_classes(kernel: str, kind: str) -> None:
    assert classify(kernel) == kind


def test_gpu_tests_include_every_gpu_marked_file() -> None:
    files = tests.gpu_test_files()
    assert "tests/kernels" in files
    assert "tests/server/test_sampling_batched.py" in files  # test_cuda_rows_draw_the_cpus_tokens
    marked = [f for f in files if f != "tests/kernels"]
    assert all("mark.gpu" in (ROOT / f).read_text() for f in marked)


def test_kernel_check_names_a_wrong_answer() -> None:
    """The kernel table times only methods that equal the reference: one that leaves y alone is WRONG."""
    import torch

    from bench.device.kernels import check, make_case, methods

    case = make_case(torch.device("cpu"), 32, 16, [1, 1, 1], 3, seed=0)
    assert check(case, methods(case)["bgmv"]) == ""  # the real kernel (interpreter) passes
    assert check(case, lambda: None).startswith("WRONG: max abs err")
