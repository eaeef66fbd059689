"""Every Triton kernel compiles for the GPU (Hopper, sm_90) with the arguments its launcher
passes, fits its shared memory and hardly spills registers: what the interpreter, which
runs them in CI, cannot tell. The compilation runs in ``triton_compile.py``, in a fresh
process (see there)."""

import ast
from pathlib import Path

import pytest
from conftest import HAVE_CUDA_COMPILER, json_lines_without_interpreter

ROOT = Path(__file__).resolve().parents[2]
KERNEL_FILES = [
    ROOT / f"src/sparsegen/_triton_{name}.py" for name in ("projection", "transform", "attention")
]
# The most shared memory one block may take on sm_90 (227 KiB, opted in).
HOPPER_SHARED_BYTES = 227 * 1024
# Spilled bytes a thread: a few registers' worth is tolerable, the kilobytes float32's
# full-precision products spill at 64 × 64 tiles (local-memory traffic on every use) are not.
SPILL_BYTES = 1024


pytestmark = [
    pytest.mark.xdist_group("triton_compile"),  # (one worker runs this module: its fixture once)
    pytest.mark.skipif(
        not HAVE_CUDA_COMPILER, reason="triton with its CUDA backend (ptxas) is not installed"
    ),
]


def _kernel_names() -> set[str]:
    """The ``@triton.jit`` functions the launchers start (``*_kernel``), read from the source."""
    names = set()
    for path in KERNEL_FILES:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.endswith("_kernel"):
                names.add(node.name)
    return names


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    script = Path(__file__).with_name("triton_compile.py")
    return json_lines_without_interpreter(
        script, "--arch", "90", caches=tmp_path_factory.mktemp("caches")
    )


def test_every_kernel_compiles_for_hopper(compiled):
    assert _kernel_names() <= {launch["kernel"] for launch in compiled}


def test_every_launch_fits_hoppers_shared_memory(compiled):
    too_big = [launch for launch in compiled if launch["shared"] > HOPPER_SHARED_BYTES]
    assert not too_big


def test_no_launch_spills_more_than_a_few_registers(compiled):
    spilling = [launch for launch in compiled if launch["spilled"] > SPILL_BYTES]
    assert not spilling


def test_the_cases_cover_every_mode_and_dtype(compiled):
    cases = " ".join(launch["case"] for launch in compiled)
    for word in ("given", "cone", "hourglass", "exp", "sq", "dropout", "causal", "gqa"):
        assert f" {word}" in cases
    for dtype in ("float32", "bfloat16", "float16", "float64"):
        assert f" {dtype}" in cases


def test_half_precision_attention_multiplies_on_hoppers_warp_group_tensor_cores(compiled):
    # Hopper's wgmma, not the older warp-level mma nor float32 arithmetic: at head dims up
    # to 128 the half-precision tiles (64 × 64) are what wgmma takes; past 128 the tiles
    # shrink to 32 × 32 to fit the registers, and its products fall back to mma.
    half = [launch for launch in compiled if launch["kernel"].startswith("_attention")
            and "float32" not in launch["case"] and "d256" not in launch["case"]]  # fmt: skip
    assert half and all(launch["products"] == "wgmma" for launch in half)
    full = [launch for launch in compiled
            if launch["kernel"].startswith("_attention") and "ieee" in launch["case"]]  # fmt: skip
    assert full and all(launch["products"] == "fma" for launch in full)  # float32 exactly


def test_thresholds_and_means_are_divided_as_the_cpu_divides(compiled):
    # The backward's mean over the support and the share of a +inf entry in float32 are
    # rounded to nearest, as the CPU kernel's: compiled, `/` is approximate (τ = (Σ − 1)/|S|
    # is divided in float64 in every kernel, the attention's too, and rounded once)
    dividing = {"_project_short_kernel", "_split_write_kernel", "_vjp_short_kernel",
                "_vjp_write_kernel"}  # fmt: skip
    float32 = [launch for launch in compiled if launch["kernel"] in dividing
               and "float32" in launch["case"]]  # fmt: skip
    assert {launch["kernel"] for launch in float32} == dividing
    assert all(launch["rounded_divisions"] > 0 for launch in float32)


def test_the_square_and_ratio_transforms_divide_as_the_cpu_divides(compiled):
    # (|z| − top)/top · (|z|/top + 1) and z/top in float32, rounded to nearest as numba's:
    # compiled, `/` is approximate, and the GPU's gaps were a few ulps off the CPU's (the
    # exp transform's e^x is approximate on the GPU anyway)
    divided = ("transform square_gap", "transform ratio", "transform backward square_gap")
    transforms = [
        launch
        for launch in compiled
        if "float32" in launch["case"] and launch["case"].startswith(divided)
    ]
    assert transforms and all(launch["approximate_divisions"] == 0 for launch in transforms)
    writes = [launch for launch in transforms if launch["kernel"] != "_transform_max_kernel"]
    assert writes and all(launch["rounded_divisions"] > 0 for launch in writes)


def test_contiguous_rows_take_no_integer_division(compiled):
    # A row's start is (row // inner) · outer stride + (row % inner) · inner stride; for a
    # contiguous tensor (scores, mask, gradient) the inner size is 1, which Triton
    # specialises, so the 64-bit divisions (tens of instructions each) fold away.
    # A split path's program finds its row and chunk on a grid of one axis by one 32-bit
    # division, once (split_program).
    split_programs = {"_split_stats_kernel", "_split_candidates_kernel", "_split_write_kernel",
                      "_vjp_partial_kernel", "_vjp_write_kernel", "_transform_max_kernel",
                      "_transform_write_kernel"}  # fmt: skip

    def decode(launch):
        return int(launch["kernel"] in split_programs)

    kernels = [launch for launch in compiled if launch["case"].startswith(("project", "vjp"))]
    contiguous = [launch for launch in kernels if "strided" not in launch["case"]]
    assert contiguous and all(launch["divisions"] == decode(launch) for launch in contiguous)
    strided = [launch for launch in kernels if "strided" in launch["case"]]
    assert strided and all(launch["divisions"] > decode(launch) for launch in strided)


def test_the_attentions_square_gap_divides_as_the_cpu_divides(compiled):
    # sparsegen-sq's gap in the fused attention: an approximate `/` moved a key tied at τ
    # to the other side of it than the unfused path (the CPU's transform) puts it
    def approximate(case):
        (launch,) = [launch for launch in compiled if launch["case"] == case
                     and launch["kernel"] == "_attention_forward_kernel"]  # fmt: skip
        return launch["approximate_divisions"]

    assert approximate("attention sq param") <= approximate("attention given param")
