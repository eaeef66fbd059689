"""The command line's user errors: one line naming the problem, exit status 2, before any work."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plot", "--out", ""], "expected a folder; got an empty path"),
        (["attention", "--seeds", "0"], "must be at least 1; got 0"),
        (["multilabel", "--jobs", "0"], "must be at least 1; got 0"),
        (["attention", "--jobs", "two"], "expected a whole number; got 'two'"),
        (["plot", "--out", "/proc/forbidden"], "--out /proc/forbidden: cannot write there"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, message, tmp_path):
    # In a subprocess, as a user runs it: exit status 2, the problem named, no traceback,
    # nothing written into the current directory.
    result = subprocess.run(
        [sys.executable, "-m", "sparsegen", *argv], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())


def test_an_existing_file_is_no_output_folder(tmp_path):
    existing = tmp_path / "table.md"
    existing.write_text("keep me")
    result = subprocess.run(
        [sys.executable, "-m", "sparsegen", "properties", "--out", str(existing)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "is a file; give a folder" in result.stderr
    assert existing.read_text() == "keep me"
