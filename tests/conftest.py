import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors; triton reads
# this when it is imported, so it is set before any test imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from sparsegen._projection import triton_installed

HAVE_TRITON = triton_installed()


def _has_cuda_compiler() -> bool:
    """Whether triton can compile for CUDA here: its NVIDIA backend with ptxas (looked up
    without importing triton)."""
    if not HAVE_TRITON:
        return False
    package = Path(importlib.util.find_spec("triton").origin).parent
    return (package / "backends/nvidia/bin/ptxas").exists()


HAVE_CUDA_COMPILER = _has_cuda_compiler()


def json_lines_without_interpreter(script: Path, *args: str, caches: Path) -> list[dict]:
    """The JSON lines ``script`` prints, run in a fresh process with Triton compiling for
    real (the interpreter is chosen when triton is imported) and fresh Triton and inductor
    caches (torch keys a compiled graph by the kernels' source, not by the operators'
    Python, which a cached graph would otherwise stand in for)."""
    env = dict(
        os.environ,
        TRITON_CACHE_DIR=str(caches / "triton"),
        TORCHINDUCTOR_CACHE_DIR=str(caches / "inductor"),
    )
    env.pop("TRITON_INTERPRET", None)
    run = subprocess.run(
        [sys.executable, "-W", "ignore", str(script), *args],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-6000:]
    return [json.loads(line) for line in run.stdout.splitlines()]


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist, each worker's torch, numba (which follows torch's count) and BLAS
    threads take its share of the cores: more threads than cores spin in their barriers,
    which made a 12 s test take minutes beside another worker. The thread-parallel kernels
    are tested with explicit counts (test_kernels.py's thread tests)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // workers)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the processes the tests start
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)


_share_the_cores_between_workers()

settings.register_profile(
    "default", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ALGORITHMS = ["sort", "michelot", "compiled", *(["triton"] if HAVE_TRITON else [])]


@pytest.fixture(params=ALGORITHMS)
def algorithm(request):
    return request.param


def saved_bytes(f, *args) -> int:
    """Bytes that autograd keeps for the backward of ``f(*args)``."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        f(*args)
    return total


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _triton_memory_checked():
    """In Triton's interpreter every kernel's memory accesses are checked, in every test: in
    bounds, and no program reading its own stores without a barrier (tests/triton_memory.py)."""
    if not (HAVE_TRITON and os.environ.get("TRITON_INTERPRET") == "1"):
        yield
        return
    from triton_memory import memory_checked
    from triton_patch_once import language_patched_once

    with memory_checked(), language_patched_once():
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The modules marked ``xdist_group`` (those whose module-scoped fixture is expensive: a
    compile of every kernel, a trained run) first, each in one piece. pytest-xdist's load
    scheduler splits a module's tests between the workers where they fall at a chunk's
    edge, each worker then running the fixture (the sm_90 compile check twice, two
    minutes each); at the front, the marked modules' 150 tests fall in the first worker's
    first chunk (a quarter of its share, 500 tests). ``--dist loadgroup``, which would
    keep them together, does not under pytest 9 (it renames the items through an attribute
    pytest no longer reads) and hands the workers one test at a time, setting module
    fixtures up again and again. The order is the same on every worker, as xdist needs."""
    grouped = [item for item in items if item.get_closest_marker("xdist_group")]
    if grouped:
        rest = [item for item in items if not item.get_closest_marker("xdist_group")]
        items[:] = grouped + rest
