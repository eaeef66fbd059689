import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

from sparsegen._projection import triton_installed

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors; triton reads
# this when it is imported, so it is set before any test imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
HAVE_TRITON = triton_installed()

settings.register_profile(
    "default", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ALGORITHMS = ["sort", "michelot", "compiled", *(["triton"] if HAVE_TRITON else [])]


@pytest.fixture(params=ALGORITHMS)
def algorithm(request):
    return request.param


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

    with memory_checked():
        yield
