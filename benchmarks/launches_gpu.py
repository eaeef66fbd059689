"""How many kernels each mapping's forward and backward launch on the GPU path, against
torch.softmax's: at the small, launch-bound shapes (about 5 µs a launch on an H100/H200)
the count, not the bandwidth, sets the time.

Counted on the Triton route (``algorithm="triton"``), eager, with a gradient to record
(and a forward without one, as at inference): the Triton kernels launched, and the torch
operations outside them (each a CUDA kernel on a GPU; views and allocations are none, but
a conversion or copy that a view-like call makes is one).
On CUDA tensors where a GPU is; elsewhere in Triton's interpreter on CPU tensors, with the
library's CPU-only shortcuts turned off (the numba kernels, and the host reads that are
free on the CPU), so that it runs the Python a CUDA tensor does and launches the same
kernels (the interpreter's own copies, inside a launch, are not counted).
Writes benchmarks/launches.md.

    python benchmarks/launches_gpu.py [--output benchmarks/launches.md]
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from torch.profiler import ProfilerActivity, profile, record_function
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

import sparsegen as sg

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPE = (64, 100)
LONG_SHAPE = (4, 40_000)  # rows split into chunks across programs (past 16,384 on chip)
LAUNCH = "triton launch"
# Operations that launch nothing: views, allocations, dtype and metadata queries.
FREE = {"detach", "view", "_unsafe_view", "alias", "expand", "unsqueeze", "squeeze",
        "reshape", "as_strided", "slice", "select", "lift_fresh", "empty", "empty_strided",
        "empty_like", "new_empty", "new_empty_strided", "permute", "transpose", "movedim",
        "to", "result_type", "promote_types", "t", "lift", "contiguous", "is_nonzero"}  # fmt: skip


def _mappings(
    lam: torch.Tensor, q: torch.Tensor, mask: torch.Tensor
) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    triton = {"algorithm": "triton"}
    return {
        "torch.softmax": lambda x: torch.softmax(x, -1),
        "sparsemax": lambda x: sg.sparsemax(x, **triton),
        "sparsegen-lin λ=0.5": lambda x: sg.sparsegen_lin(x, lam=0.5, **triton),
        "sparsegen-lin, learnt λ": lambda x: sg.sparsegen_lin(x, lam=lam, **triton),
        "sparsegen-exp λ=0.5": lambda x: sg.sparsegen_exp(x, lam=0.5, **triton),
        "sparsegen-exp, learnt λ": lambda x: sg.sparsegen_exp(x, lam=lam, **triton),
        "sparsegen-sq λ=0.5": lambda x: sg.sparsegen_sq(x, lam=0.5, **triton),
        "sparsecone q=1": lambda x: sg.sparsecone(x, q=1.0, **triton),
        "sparsehourglass q=1": lambda x: sg.sparsehourglass(x, q=1.0, **triton),
        "sparsecone, learnt q": lambda x: sg.sparsecone(x, q=q, **triton),
        "sparsehourglass, learnt q": lambda x: sg.sparsehourglass(x, q=q, **triton),
        "sum-normalization++": lambda x: sg.sum_normalization_pp(x, **triton),
        "sparsemax, masked": lambda x: sg.sparsemax(x, mask=mask, **triton),
    }


def _as_on_cuda() -> None:
    """CPU tensors taken as CUDA tensors are: no numba kernel, and no value read on the host
    to steer a branch (:func:`sparsegen._validation.on_device`), in every module that holds
    those functions."""
    from sparsegen import _ops, _projection, _validation, attention, functional

    for module in (_projection, _ops):
        module.compilable = lambda t: False
    for module in (_validation, _projection, functional, attention):
        module.on_device = lambda t: not torch.compiler.is_compiling()


def _count_launches() -> None:
    """Wrap each Triton launch in a profiler range, so that the operations inside it (the
    interpreter's copies) are told apart from the caller's."""
    for kind in (JITFunction, InterpretedFunction):
        kind.run = _marked(kind.run)


def _marked(run: Callable) -> Callable:
    def marked(self, *args, **kwargs):
        with record_function(LAUNCH):
            return run(self, *args, **kwargs)

    return marked


def _launches_a_kernel(name: str, parents: list[str]) -> bool:
    """Whether a torch operation (``name``, inside ``parents``) launches a kernel of its own:
    the first one that is not free in its chain of calls, outside a Triton launch (a free
    operation may call one that is not: ``to`` another dtype copies, as ``contiguous``
    of a strided tensor does)."""
    operations = [p[6:] for p in parents if p.startswith("aten::")]
    return (
        name.startswith("aten::")
        and name[6:] not in FREE
        and LAUNCH not in parents
        and all(p in FREE for p in operations)
    )


def _launches(step: Callable[[], object]) -> tuple[int, int]:
    """``(Triton kernels, torch operations)`` that ``step`` launches."""
    with profile(activities=[ProfilerActivity.CPU]) as recorded:
        step()
    kernels = operations = 0
    for event in recorded.events():
        parents, parent = [], event.cpu_parent
        while parent is not None:
            parents.append(parent.name)
            parent = parent.cpu_parent
        if event.name == LAUNCH:
            kernels += 1
        elif _launches_a_kernel(event.name, parents):
            operations += 1
    return kernels, operations


def _forward_and_backward(
    mapping: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor
) -> tuple[tuple[int, int], tuple[int, int]]:
    mapping(x).backward(grad)  # (compiled, and the first call's caches filled)
    output = []
    forward = _launches(lambda: output.append(mapping(x)))
    return forward, _launches(lambda: output[0].backward(grad))


def _inference(mapping: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[int, int]:
    """The launches of a forward that records nothing (``torch.no_grad``)."""
    with torch.no_grad():
        mapping(x)  # (compiled, and the first call's caches filled)
        return _launches(lambda: mapping(x))


def table() -> list[str]:
    x = torch.randn(*SHAPE, device=DEVICE, requires_grad=True)
    grad = torch.randn(*SHAPE, device=DEVICE)
    lam = torch.full((SHAPE[0], 1), 0.3, device=DEVICE, requires_grad=True)
    q = torch.full((SHAPE[0], 1), 1.0, device=DEVICE, requires_grad=True)
    mask = torch.rand(*SHAPE, device=DEVICE) > 0.1  # (made once, as a model's padding mask)
    rows = ["| mapping | forward: Triton + torch | backward: Triton + torch | all ÷ softmax's "
            "| forward without a gradient |", "|---|---|---|---|---|"]  # fmt: skip
    long_x = torch.randn(*LONG_SHAPE, device=DEVICE, requires_grad=True)
    cases = [(name, mapping, x, grad) for name, mapping in _mappings(lam, q, mask).items()]
    long_name = f"sparsemax, {LONG_SHAPE[0]} rows of {LONG_SHAPE[1]:,} (split)"
    cases.append((long_name, cases[1][1], long_x, torch.randn_like(long_x)))
    softmax_total = None
    for name, mapping, scores, grad in cases:
        forward, backward = _forward_and_backward(mapping, scores, grad)
        total = sum(forward) + sum(backward)
        softmax_total = softmax_total or total  # (the same at any shape)
        inference = _inference(mapping, scores)
        counts = (f"{forward[0]} + {forward[1]}", f"{backward[0]} + {backward[1]}",
                  f"{total / softmax_total:.1f}×", f"{inference[0]} + {inference[1]}")  # fmt: skip
        rows.append(f"| {name} | {' | '.join(counts)} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("launches.md"))
    args = parser.parse_args()
    _count_launches()
    if DEVICE == "cpu":
        _as_on_cuda()
    where = torch.cuda.get_device_name() if DEVICE == "cuda" else "Triton's interpreter (CPU)"
    page = [
        "# Kernel launches of the GPU path",
        "",
        f"{date.today()}, {where}, torch {torch.__version__}, {platform.python_version()}; "
        f"scores {SHAPE[0]}×{SHAPE[1]} float32 (the last row's {LONG_SHAPE[0]}×{LONG_SHAPE[1]}) "
        'that record a gradient, `algorithm="triton"`, '
        "eager. Each backward includes the accumulation into `x.grad` (one operation); the "
        "last column is a forward under `torch.no_grad()`. "
        "`python benchmarks/launches_gpu.py`.",
        "",
        *table(),
    ]
    args.output.write_text("\n".join(page) + "\n")
    print("\n".join(page))


if __name__ == "__main__":
    main()
