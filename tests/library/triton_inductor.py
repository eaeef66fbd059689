"""``torch.compile``'s inductor launching the projection's Triton kernels itself, without a GPU.

On CUDA, ``torch.compile`` traces into the ``triton_op`` operators
(``sparsegen::project_triton`` and ``sparsegen::project_backward_triton``), so inductor's
generated code launches the kernels rather than calling back into sparsegen. No GPU is
here, so this script compiles on CPU tensors that stand in for CUDA ones: the Triton route
is taken as on CUDA (:func:`sparsegen._projection.tritonable` accepts them), inductor
compiles the kernels it copied into its generated code for Hopper (sm_90, through
``triton_compile.py``'s compile-only driver), and a launch is recorded instead of run, so
the outputs are not computed (the interpreter's tests and the GPU's check those).

What it shows: the operators trace with fake and functional tensors, inductor generates
and compiles code for every kernel a route launches, forward and backward, and that code
calls no sparsegen operator. Run as a script, it prints one JSON line a case;
``test_triton_inductor.py`` runs it in a fresh process (the interpreter is chosen when
triton is imported).
"""

from __future__ import annotations

import os

os.environ.pop("TRITON_INTERPRET", None)  # the interpreter is chosen when triton is imported

import json
import re
import sys
from collections.abc import Callable
from typing import ClassVar

import torch
import triton.compiler.compiler as triton_compiler
from torch._higher_order_ops import triton_kernel_wrap
from torch._inductor.utils import run_and_get_code
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton_compile import _CompileOnlyDriver

import sparsegen as sg
from sparsegen import _ops, _projection

HOPPER = GPUTarget("cuda", 90, 32)


class _Launches:
    """A compiled kernel's launcher that records the kernel's name instead of running it."""

    names: ClassVar[list[str]] = []

    def __init__(self, src, metadata) -> None:
        self.name = src.fn.__name__

    def __call__(self, *args, **kwargs) -> None:
        _Launches.names.append(self.name)


class _LoadNothing:
    """The driver's binary loader, for a binary never run: Hopper's limits, no module."""

    def load_binary(self, name, kernel, shared, device):
        return object(), object(), 0, 0, 1024  # module, function, registers, spills, threads

    def get_device_properties(self, device):
        return {"max_shared_mem": 232448, "multiprocessor_count": 132, "warpSize": 32}

    def unload_module(self, module) -> None:
        pass


class _RecordingDriver(_CompileOnlyDriver):
    launcher_cls = _Launches
    utils = _LoadNothing()


class _Written:
    """The arguments each kernel writes, as torch's analysis of its Triton IR finds them
    (what it finds written, the functional graph copies first: a kernel taken to write its
    scores would cost a copy of them under compile)."""

    by_kernel: ClassVar[dict[str, list[str]]] = {}

    @classmethod
    def record(cls) -> None:
        analysis = triton_kernel_wrap.get_mutated_tensors

        def recorded(kernel_idx, constant_args_idx, kwargs, tma_descriptor_metadata):
            written = analysis(kernel_idx, constant_args_idx, kwargs, tma_descriptor_metadata)
            name = triton_kernel_wrap.kernel_side_table.get_kernel(kernel_idx).fn.__name__
            cls.by_kernel[name] = sorted(set(cls.by_kernel.get(name, [])) | set(written))
            return written

        triton_kernel_wrap.get_mutated_tensors = recorded


def _as_on_cuda() -> None:
    """CPU tensors take the Triton route, and inductor compiles their kernels for Hopper, in
    this process (its compile workers would not see these stand-ins)."""
    torch._inductor.config.compile_threads = 1
    _Written.record()
    driver.set_active(_RecordingDriver(90))
    make_backend = triton_compiler.make_backend
    triton_compiler.make_backend = lambda target: make_backend(
        HOPPER if target.backend == "cpu" else target
    )
    _projection.tritonable = lambda t: t.dtype in _projection.TRITON_DTYPES
    _ops.tritonable = _projection.tritonable
    _ops._TRITON_OPERATORS = _ops._register_triton_operators()  # as where CUDA is


def _scores(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype, requires_grad=True)


def _cases() -> dict[str, tuple[Callable, tuple, dict]]:
    """``(mapping, inputs, torch.compile options)``: each route the Triton operators take."""
    lam = torch.full((8, 1), 0.3, requires_grad=True)
    padding = torch.rand(2, 1, 64) > 0.2
    triton = dict(algorithm="triton")  # what "auto" is on CUDA
    return {
        "sparsemax": (lambda z: sg.sparsemax(z, **triton), (_scores(8, 100),), {}),
        "sparsemax split rows": (lambda z: sg.sparsemax(z, **triton), (_scores(2, 20000),), {}),
        "sparsehourglass split rows masked": (
            lambda z, m: sg.sparsehourglass(z, q=0.5, mask=m, **triton),
            (_scores(2, 20000), torch.rand(2, 20000) > 0.5),
            {},
        ),
        "sparsegen_lin learnt lam": (
            lambda z, lam: sg.sparsegen_lin(z, lam=lam, **triton),
            (_scores(8, 100), lam),
            {},
        ),
        "sparsecone bfloat16 key padding": (
            lambda z, m: sg.sparsecone(z, q=1.0, mask=m, **triton),
            (_scores(2, 3, 64, dtype=torch.bfloat16), padding),
            {},
        ),
        "sparsemax along dim 1": (
            lambda z: sg.sparsemax(z, 1, **triton),
            (_scores(2, 70, 4, 5),),
            {},
        ),
        "sparsemax along dim 1 dynamic": (
            lambda z: sg.sparsemax(z, 1, **triton),
            (_scores(2, 70, 4, 5),),
            dict(dynamic=True),
        ),
        "sparsehourglass float16 dynamic": (
            lambda z: sg.sparsehourglass(z, q=0.5, **triton),
            (_scores(8, 100, dtype=torch.float16),),
            dict(dynamic=True),
        ),
    }


def _run(mapping: Callable, inputs: tuple, options: dict) -> dict:
    """The kernels launched by the compiled forward and backward, in order, what each
    writes, and the sparsegen operators their generated code calls."""
    compiled = torch.compile(mapping, fullgraph=True, backend="inductor", **options)
    _Launches.names.clear()
    _Written.by_kernel.clear()
    _, forward_code = run_and_get_code(compiled, *inputs)
    forward = list(_Launches.names)
    _Launches.names.clear()
    _, backward_code = run_and_get_code(lambda: compiled(*inputs).float().sum().backward())
    backward = _Launches.names[len(forward) :]  # after the forward's launches again
    code = "\n".join(forward_code + backward_code)
    return dict(
        graphs=[len(forward_code), len(backward_code)],
        forward=forward,
        backward=backward,
        written=_Written.by_kernel,
        sparsegen_calls=sorted(set(re.findall(r"torch\.ops\.sparsegen\.\w+", code))),
    )


def main() -> int:
    _as_on_cuda()
    only = sys.argv[1] if len(sys.argv) > 1 else ""
    for name, (mapping, inputs, options) in _cases().items():
        if only in name:
            torch._dynamo.reset()
            print(json.dumps(dict(case=name, **_run(mapping, inputs, options))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
