"""The GPU benchmark scripts run end to end in their smoke mode (tiny shapes, Triton's
interpreter on CPU tensors), so that a session lent a GPU for minutes never loses them to
a script's own error. What they time here means nothing; that they finish and report does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HAVE_TRITON

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.skipif(not HAVE_TRITON, reason="the GPU scripts need triton")


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("bench_gpu.py", "# The projection on a GPU"),
        ("bench_attention_gpu.py", "## MultiheadAttention"),
        ("train_attention_gpu.py", "## The kernel on the trained models"),
        ("tune_gpu.py", "## Fused sparsemax attention"),
    ],
)
def test_smoke_run_reports(script, expected, tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", MPLBACKEND="Agg")
    result = subprocess.run(
        [sys.executable, script, "--smoke", "--output", str(tmp_path / "report.md")],
        cwd=BENCHMARKS, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    assert expected in report and "Run time:" in report
    assert "fails:" not in report and "wrong" not in report, report
