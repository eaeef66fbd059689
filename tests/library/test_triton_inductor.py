"""Under ``torch.compile`` on CUDA, inductor launches the projection's Triton kernels from
its own generated code (the ``triton_op`` operators), forward and backward, on every route,
and torch's analysis finds each kernel writing only its outputs, so the compiled graph
copies no input. Without a GPU this runs in ``triton_inductor.py`` (see there) in a fresh
process; a GPU runs the same compiled code for real in ``test_triton_kernels.py``."""

from pathlib import Path

import pytest
from conftest import HAVE_CUDA_COMPILER, json_lines_without_interpreter

pytestmark = [
    pytest.mark.xdist_group("triton_inductor"),  # (one worker runs this module: its fixture once)
    pytest.mark.skipif(
        not HAVE_CUDA_COMPILER, reason="triton with its CUDA backend (ptxas) is not installed"
    ),
]

SHORT = (["_project_short_kernel"], ["_vjp_short_kernel"])
SPLIT = (
    ["_split_stats_kernel", "_split_candidates_kernel", "_split_newton_kernel",
     "_split_write_kernel"],
    ["_vjp_partial_kernel", "_vjp_write_kernel"],
)  # fmt: skip
EXPECTED = {
    "sparsemax": SHORT,
    "sparsemax split rows": SPLIT,
    "sparsehourglass split rows masked": SPLIT,
    "sparsegen_lin learnt lam": SHORT,
    "sparsecone bfloat16 key padding": SHORT,
    "sparsehourglass float16 dynamic": SHORT,
    # rows of two strides, read in place (their strides symbolic under dynamic shapes)
    "sparsemax along dim 1": SHORT,
    "sparsemax along dim 1 dynamic": SHORT,
}
# What the kernels only read: the scores, the mask, the scale, q, and the backward's output
# and gradient.
INPUTS = {"z_ptr", "keep_ptr", "scale_ptr", "q_ptr", "p_ptr", "g_ptr"}
# The kernel that writes the cone's computed scale, where there is one.
CONE_SCALE_WRITER = {
    "sparsehourglass split rows masked": "_split_candidates_kernel",
    "sparsecone bfloat16 key padding": "_project_short_kernel",
    "sparsehourglass float16 dynamic": "_project_short_kernel",
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    script = Path(__file__).with_name("triton_inductor.py")
    cases = json_lines_without_interpreter(script, caches=tmp_path_factory.mktemp("caches"))
    return {case["case"]: case for case in cases}


@pytest.mark.parametrize("case", EXPECTED)
def test_inductor_launches_the_kernels_itself(compiled, case):
    forward, backward = EXPECTED[case]
    assert compiled[case]["forward"] == forward
    assert compiled[case]["backward"] == backward
    assert compiled[case]["sparsegen_calls"] == []  # no call back into sparsegen


@pytest.mark.parametrize("case", EXPECTED)
def test_no_kernel_is_taken_to_write_its_inputs(compiled, case):
    written = compiled[case]["written"]
    assert set(written) == {*EXPECTED[case][0], *EXPECTED[case][1]}
    for kernel, arguments in written.items():
        assert not INPUTS & set(arguments), kernel
    scale_writers = {kernel for kernel, arguments in written.items() if "alpha_ptr" in arguments}
    assert scale_writers == ({CONE_SCALE_WRITER[case]} if case in CONE_SCALE_WRITER else set())
