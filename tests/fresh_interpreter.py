"""Python code, or the ``sparsegen`` command, run as in a fresh interpreter, without paying
for torch's import each time.

Each run is a child forked from one server process that imported sparsegen once
(multiprocessing's forkserver and its preload) and nothing else of the tests': it starts
with fresh globals, its own working directory, arguments, stdout and stderr, and names
nothing it does not import itself. What it cannot see is what a first import does, which
the tests that need it (a first call's compile, an extra that is not installed) still
check in a real subprocess; nor does it run exit handlers (the child ends with
``os._exit``), and its ``sys.path`` is the tests'.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

from sparsegen import _fork


class Completed(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


_context: multiprocessing.context.ForkServerContext | None = None


def _server() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        # (sparsegen imports its numba kernels on a first call, as each child still does
        # with the kernels it calls: importing them loads no compiled code)
        _context.set_forkserver_preload(["sparsegen", "sparsegen._kernels", "fresh_interpreter"])
    return _context


def _child(code: str | None, argv: list[str], cwd: str | None, out: str, err: str) -> None:
    # The server ran no parallel work before it forked, so the kernels may start their
    # threads as in a fresh process (the fork hook marks every forked child).
    _fork.forked = False
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY), fd)
    if cwd is not None:
        os.chdir(cwd)
    if code is None:  # python -m sparsegen ARGV
        sys.argv = ["sparsegen", *argv]
        runpy.run_module("sparsegen", run_name="__main__", alter_sys=True)
    else:  # python -c CODE
        sys.argv = ["-c"]
        exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})


def _run(code: str | None, argv: list[str], cwd: Path | None) -> Completed:
    with tempfile.TemporaryDirectory() as folder:
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        out.touch()
        err.touch()
        # (the process prints an uncaught exception's traceback to stderr and exits 1; a
        # SystemExit gives its code, as the interpreter does)
        child = _server().Process(
            target=_child, args=(code, argv, None if cwd is None else str(cwd), str(out), str(err))
        )
        child.start()
        child.join()
        return Completed(child.exitcode, out.read_text(), err.read_text())


def run_code(code: str) -> Completed:
    """``python -c code``, as in a fresh interpreter."""
    return _run(code, [], None)


def run_command(argv: list[str], cwd: Path | None = None) -> Completed:
    """``python -m sparsegen *argv`` in ``cwd``, as in a fresh interpreter."""
    return _run(None, list(argv), cwd)
