"""Compile every Triton kernel for a GPU that is not here, through the launchers' own calls.

The interpreter (``TRITON_INTERPRET=1``), which runs the kernels in CI, executes them as
NumPy and checks none of what the compiler checks: a global the JIT rejects, a type or a
shape ``tl.dot`` refuses, a lowering that fails, shared memory past the chip's limit. So
this script runs each launcher on CPU tensors with a stand-in driver that reports a CUDA
target and compiles each launch (``warmup``) instead of running it: the real compiler, down
to ptxas's cubin, on the arguments and constants the launcher really passes. The GPU-only
choices (block sizes, candidate slots, the dot's precision) are taken as on CUDA. Each
launch reports its shared memory, registers and spilled bytes a thread, the figures that
chose the block sizes.

Run as a script (``python tests/library/triton_compile.py [--arch 90]``) it prints one JSON
line a compiled launch; ``test_triton_compile.py`` runs it in a fresh process, since the
interpreter is chosen when triton is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.jit import JITFunction

from sparsegen import _triton_attention as attention
from sparsegen import _triton_projection as projection
from sparsegen._projection import ConeScale
from sparsegen._triton_transform import transform_backward_triton, transform_triton
from sparsegen._validation import compute_dtype


class _CompileOnlyDriver:
    """What the JIT asks of the active driver before it compiles, for a CUDA target."""

    def __init__(self, arch: int) -> None:
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


def _compile_instead_of_launching(record: Callable[[str, object, float], None]) -> None:
    launch = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        start = time.perf_counter()
        kernel = launch(self, *args, grid=grid, warmup=True, **kwargs)
        record(self.fn.__name__, kernel, time.perf_counter() - start)
        return kernel

    JITFunction.run = run


def _as_on_cuda() -> None:
    """The launchers pick GPU block sizes, slots and precision by the tensors' device."""
    cuda = torch.device("cuda")
    block_sizes, slots, precision = (
        attention.block_sizes, attention.candidate_slots, attention.precision
    )  # fmt: skip
    attention.block_sizes = lambda device, dtype, head_dim: block_sizes(cuda, dtype, head_dim)
    attention.candidate_slots = lambda device: slots(cuda)
    attention.precision = lambda device, dtype: precision(cuda, dtype)


def _registers(kernel) -> dict[str, int]:
    """The registers a thread takes and the bytes it spills to its stack, as ``cuobjdump``
    (shipped beside ptxas in triton's CUDA backend) reads them off the cubin."""
    tool = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        report = subprocess.run(
            [str(tool), "-res-usage", str(cubin)], capture_output=True, text=True, check=True
        ).stdout
    usage = re.search(r"REG:(\d+) STACK:(\d+)", report)
    return dict(registers=int(usage[1]), spilled=int(usage[2]))


def _products(kernel) -> str:
    """How the kernel's ``tl.dot`` products run, read off its PTX: Hopper's asynchronous
    warp-group tensor-core products (``wgmma``), the warp-level ones (``mma``), or neither
    (``fma``: plain float32 arithmetic, or no product at all)."""
    ptx = kernel.asm["ptx"]
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    return "mma" if re.search(r"\bmma\.sync", ptx) else "fma"


def _rounded_divisions(kernel) -> int:
    """The float32 divisions rounded to nearest (``div.rn.f32``) in the kernel's PTX: ``/``
    compiles to an approximate one (``div.full.f32``, within 2 ulp)."""
    return len(re.findall(r"\bdiv\.rn\.f32\b", kernel.asm["ptx"]))


def _approximate_divisions(kernel) -> int:
    """The approximate float32 divisions (``div.full.f32``, ``div.approx.f32``) in the
    kernel's PTX: what ``/`` compiles to."""
    return len(re.findall(r"\bdiv\.(?:full|approx)\.f32\b", kernel.asm["ptx"]))


def _integer_divisions(kernel) -> int:
    """The integer divisions and remainders in the kernel's PTX: a row's start in a grid
    of two strides takes one each, a contiguous tensor's none (its inner size, 1, is
    specialised and the division folded)."""
    return len(re.findall(r"\b(?:div|rem)\.[su](?:32|64)\b", kernel.asm["ptx"]))


# ----- the launches ------------------------------------------------------------------------


def projection_cases() -> Iterator[tuple[str, Callable[[], object]]]:
    """Each constexpr branch of the projection's kernels at least once, on chip and split:
    in float32 and float64 (two compute dtypes); bfloat16 (float16 loads as bfloat16)
    computes in float32 as float32 does, its loads and stores alone its own, which its
    plain launches and the longest row compile."""
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        for k, path in ((100, "short"), (40_000, "split")):
            z = torch.randn(4, k, dtype=dtype)
            output = torch.rand(4, k, dtype=dtype)
            name = f"{path} {str(dtype)[6:]}"
            project, vjp = projection.project_triton, projection.vjp_triton
            yield f"project {name}", partial(project, z, None, None)
            yield f"vjp {name}", partial(vjp, output, None, output, None)
            if dtype != torch.bfloat16:
                yield from _projection_branches(z, output, name, path)
        # the longest row held on chip: the most registers a program takes
        k = projection.MAX_SHORT_K
        z, keep = torch.randn(2, k, dtype=dtype), torch.rand(2, k) > 0.1
        hourglass = ConeScale(torch.rand(2, 1, dtype=dtype) + 0.5, True)
        name = f"longest short {str(dtype)[6:]}"
        yield f"project {name} hourglass mask", partial(project, z, None, hourglass, mask=keep)
        if dtype != torch.bfloat16:
            fused = projection.project_transformed_triton
            yield f"project exp {name}", partial(fused, z, None, "exp_gap", 0.3)
            scale = torch.rand(2, 1, dtype=dtype) + 1
            yield f"vjp {name} scale", partial(vjp, z, None, z, scale)
            scaled = projection.scaled_vjp_triton
            yield f"vjp {name} moment", partial(scaled, z, None, z, torch.rand(2, 1, dtype=dtype))


def _projection_branches(
    z: torch.Tensor, output: torch.Tensor, name: str, path: str
) -> Iterator[tuple[str, Callable[[], object]]]:
    """The branches past the plain launches, for scores ``z`` and an output of their shape."""
    rows, k, dtype = *z.shape, z.dtype
    keep = torch.rand(rows, k) > 0.1
    scale = torch.rand(rows, 1, dtype=dtype) + 1
    cone = ConeScale(torch.rand(rows, 1, dtype=dtype) + 0.5, False)
    hourglass = cone._replace(mirror=True)
    project, vjp = projection.project_triton, projection.vjp_triton
    yield f"project {name} mask scale", partial(project, z, scale, None, mask=keep)
    yield f"project {name} cone", partial(project, z, None, cone)
    factor = torch.empty(rows, 1, dtype=compute_dtype(dtype))
    learnt = {"factor": factor, "q_slope": torch.empty_like(factor)}  # (a learnt q's forward)
    learnt_q = partial(project, z, None, hourglass, mask=keep, **learnt)
    yield f"project {name} hourglass mask learnt q", learnt_q
    float_q = partial(project, z, None, ConeScale(0.5, True), factor=factor)  # (q's bits)
    yield f"project {name} hourglass float q factor", float_q
    along_dim_1 = torch.randn(2, k, 2, dtype=dtype).movedim(1, -1)  # two row strides
    yield f"project {name} strided", partial(project, along_dim_1, None, None)
    yield f"vjp {name} scale", partial(vjp, output, None, output, scale)
    yield f"project {name} number scale", partial(project, z, 2.0, None)  # (its bits)
    yield f"vjp {name} number scale", partial(vjp, output, None, output, 2.0)
    lam = torch.rand(rows, 1, dtype=dtype)  # (sparsegen-lin's λ: the kernels compute c)
    yield f"project {name} lin", partial(project, z, lam, None, lin=True)
    moment = partial(projection.scaled_vjp_triton, output, None, output, scale)
    yield f"vjp {name} moment", moment
    yield f"vjp {name} moment per scale", partial(moment, per_scale=True)
    yield f"vjp {name} moment per lam", partial(moment, per_scale=True, lin=True)
    cone_vjp = partial(projection.cone_vjp_triton, output, output, scale, scale)
    yield f"vjp {name} cone", partial(cone_vjp, None)
    yield f"vjp {name} cone mask learnt q", partial(cone_vjp, keep, q_slope=scale)
    if path == "short":  # sparsegen-exp's and -sq's projection from the scores
        fused = projection.project_transformed_triton
        yield f"project exp {name}", partial(fused, z, None, "exp_gap", 0.3)
        yield f"project sq {name} mask", partial(fused, z, keep, "square_gap", scale)
        yield f"project exp {name} saved", partial(fused, z, None, "exp_gap", 0.3, saved=True)
        for kind, keeping in (("exp_gap", None), ("square_gap", keep)):  # (their gradient)
            through = (z, keeping, scale, kind)
            yield f"vjp {name} {kind}", partial(vjp, output, None, output, scale,
                                                transform=through)  # fmt: skip


def transform_cases() -> Iterator[tuple[str, Callable[[], object]]]:
    """Each transform, masked and not, forward and backward, on chip and split, in float32
    and float64; in bfloat16 (loads and stores of its own, float32 arithmetic) one of each."""
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        half = dtype == torch.bfloat16
        for k, path in ((100, "short"), (40_000, "split")):
            z = torch.randn(4, k, dtype=dtype)
            keep = torch.rand(4, k) > 0.1
            suffix = f"{path} {str(dtype)[6:]}"
            for kind in ("exp_gap",) if half else ("exp_gap", "square_gap", "ratio"):
                name = f"transform {kind} {suffix}"
                yield f"{name} mask", partial(transform_triton, z, keep, kind)
                if not half:
                    yield name, partial(transform_triton, z, None, kind)
            grad, top = torch.randn(4, k, dtype=dtype), torch.rand(4, 1, dtype=dtype) + 1
            backward = partial(transform_backward_triton, z, keep, grad, top)
            yield f"transform backward exp_gap {suffix} mask", partial(backward, "exp_gap")
            if not half:
                square = partial(backward, "square_gap")
                yield f"transform backward square_gap {suffix} mask", square


def _attention_inputs(dtype, dim, dim_v=None, heads=4, kv_heads=4, length=96):
    q = torch.randn(2, heads, length, dim, dtype=dtype)
    k = torch.randn(2, kv_heads, length + 5, dim, dtype=dtype)
    v = torch.randn(2, kv_heads, length + 5, dim_v or dim, dtype=dtype)
    return q, k, v


def _attention_round(inputs, keep=None, bias=None, param=None, mode="given", causal=False,
                     dropout=(None, 0.0)):  # fmt: skip
    q, k, v = inputs
    output, stats = attention.attention_forward(
        q, k, v, keep, bias, param, mode, causal, q.shape[-1] ** -0.5, dropout
    )
    rows = stats.top
    eps = rows if mode in ("cone", "hourglass") else None
    return attention.attention_backward(
        output, q, k, v, keep, bias, stats, rows, eps, causal, 0.1, dropout, mode
    )


def _with_precision(precision: str, launch: Callable[..., object], *args) -> object:
    """float32's products in full precision (``"ieee"``) or TF32, as ``allow_tf32`` picks."""
    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        return launch(*args)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed


def attention_cases() -> Iterator[tuple[str, Callable[[], object]]]:
    """Forward and both backward kernels: every mode, dtype and head-dim class, masks,
    causal, GQA and dropout (each at least once, not their product: each a round)."""
    sizes = ((torch.float32, 64, "ieee"), (torch.float32, 128, "tf32"),
             (torch.float32, 256, "ieee"), (torch.bfloat16, 16, ""), (torch.bfloat16, 128, ""),
             (torch.float16, 256, ""))  # fmt: skip
    for dtype, dim, precision in sizes:
        inputs = _attention_inputs(dtype, dim)
        name = f"attention {str(dtype)[6:]} d{dim} {precision}".rstrip()
        yield name, partial(_with_precision, precision, _attention_round, inputs)
    inputs = _attention_inputs(torch.bfloat16, 64)
    batch, heads, length, source = 2, 4, 96, 101
    keep = (torch.rand(batch, 1, 1, source) > 0.2).expand(batch, heads, length, source)
    bias = torch.randn(1, heads, length, source, dtype=torch.bfloat16).expand(batch, -1, -1, -1)
    param = torch.rand(batch, heads, 1).expand(batch, heads, length) + 1
    # the masks, causal and dropout ride on two modes' rounds (sq's and given's stay plain:
    # test_triton_compile compares their divisions)
    extras = {"cone": (" keep bias causal", dict(keep=keep, bias=bias, causal=True)),
              "hourglass": (" dropout", dict(dropout=(torch.tensor(1234), 0.1)))}  # fmt: skip
    for mode in attention.MODES:
        words, options = extras.get(mode, ("", {}))
        launch = partial(_attention_round, inputs, param=param, mode=mode, **options)
        yield f"attention {mode} param{words}", launch
    gqa = _attention_inputs(torch.float16, 128, dim_v=64, heads=8, kv_heads=2)
    yield "attention gqa dv64", partial(_attention_round, gqa, causal=True)


# ----- the run -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80, 90")
    parser.add_argument("--only", default="", help="run the cases whose name holds this")
    args = parser.parse_args(argv)
    driver.set_active(_CompileOnlyDriver(args.arch))
    _as_on_cuda()
    case = ""

    def record(kernel_name, kernel, seconds):
        line = dict(case=case, kernel=kernel_name, shared=kernel.metadata.shared,
                    num_warps=kernel.metadata.num_warps, **_registers(kernel),
                    products=_products(kernel), divisions=_integer_divisions(kernel),
                    rounded_divisions=_rounded_divisions(kernel),
                    approximate_divisions=_approximate_divisions(kernel),
                    seconds=round(seconds, 2))  # fmt: skip
        print(json.dumps(line), flush=True)

    _compile_instead_of_launching(record)
    for case, launch in (*projection_cases(), *transform_cases(), *attention_cases()):
        if args.only in case:
            launch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
