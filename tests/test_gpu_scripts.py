"""The GPU benchmark scripts run end to end in their smoke mode (tiny shapes, Triton's
interpreter on CPU tensors), so that a session lent a GPU for minutes never loses them to
a script's own error. What they time here means nothing; that they finish and report does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HAVE_TRITON

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.skipif(not HAVE_TRITON, reason="the GPU scripts need triton")
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


DEVICE_CALL_S = 600  # the device tool's limit on one command


def test_each_gpu_check_part_fits_one_device_call():
    # The steps' timeouts of each part add up to under one call, with room for the start;
    # no part (the three together took 1,520 s) or a misspelt one is refused, not run.
    script = (BENCHMARKS / "gpu_check.sh").read_text()
    blocks = re.findall(r"if \[\[ \$PART == (\w+) \]\]; then\n(.*?)\nfi\n", script, re.S)
    parts = {part: sum(map(int, re.findall(r"timeout (\d+) ", body))) for part, body in blocks}
    assert set(parts) == {"first", "projection", "attention", "sanitize", "tune", "fuzz"}
    assert all(0 < total <= DEVICE_CALL_S - 20 for total in parts.values()), parts
    for argument in ([], ["all"], ["atention"]):
        run = subprocess.run(
            ["bash", str(BENCHMARKS / "gpu_check.sh"), *argument], capture_output=True, text=True
        )
        assert run.returncode == 2 and "gpu_check.sh projection" in run.stderr
