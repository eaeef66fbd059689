"""A few seeds of ``tests/fuzz_kernels.py`` (random inputs for the Triton kernels against the
float64 torch code), so that the fuzzer keeps working; run it for minutes by hand or on a GPU
(``benchmarks/gpu_check.sh fuzz``)."""

import pytest
from conftest import HAVE_TRITON

pytestmark = [
    pytest.mark.skipif(not HAVE_TRITON, reason="the kernels need triton"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # the NaN and inf fed on purpose
]


def test_projection_and_attention_seeds_pass():
    from fuzz_kernels import fuzz

    assert fuzz(seconds=0.0, seed=1000, cases=25, attention=True) == []
