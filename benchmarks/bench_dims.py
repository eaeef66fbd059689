"""sparsemax along another dimension than the last, against softmax along the same one (CPU).

The kernels project rows along the last dimension, so a mapping along dimension
``d`` copies its input with ``d`` moved last, and its output back into the caller's
layout (as do the backward's gradient and output). Those copies are tiled
transposes (``sparsegen._layout_kernels``); the last column times the same calls
with torch's strided copies instead, in the same rounds. float32, all threads
torch has. Writes benchmarks/dims.md.

    python benchmarks/bench_dims.py [--repeats 15]
"""

import argparse
import contextlib
import math
from pathlib import Path

import torch
from tqdm import tqdm

import sparsegen as sg
from sparsegen import _projection
from sparsegen.benchmark import (
    forward_backward,
    keep_freed_memory,
    markdown_table,
    median_times,
    write_report,
)

CASES = [((4096, 512), 0), ((512, 4096), 0), ((256, 256, 16), 0), ((256, 256, 16), 1),
         ((64, 1024, 64), 0), ((64, 1024, 64), 1), ((16, 32768), 0)]  # fmt: skip


@contextlib.contextmanager
def torch_copies():
    """The layout copies left to torch (the tiles' size floor raised past any input)."""
    floor = _projection.TILED_MIN_ELEMENTS
    _projection.TILED_MIN_ELEMENTS = math.inf
    try:
        yield
    finally:
        _projection.TILED_MIN_ELEMENTS = floor


def with_torch_copies(fn):
    def run():
        with torch_copies():
            return fn()

    return run


def case_times(shape, dim: int, repeats: int) -> dict[str, float]:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    last = x.movedim(dim, -1).contiguous()
    grad = torch.randn(shape)
    calls = {
        "softmax": lambda: torch.softmax(x, dim),
        "sparsemax": lambda: sg.sparsemax(x, dim=dim),
        "sparsemax, last dim": lambda: sg.sparsemax(last, dim=-1),
        "softmax fwd+bwd": forward_backward(lambda t: torch.softmax(t, dim), x, grad),
        "sparsemax fwd+bwd": forward_backward(lambda t: sg.sparsemax(t, dim=dim), x, grad),
    }
    calls["torch copies"] = with_torch_copies(calls["sparsemax"])
    calls["torch copies fwd+bwd"] = with_torch_copies(calls["sparsemax fwd+bwd"])
    return median_times(calls, repeats)


def row(shape, dim: int, t: dict[str, float]) -> tuple:
    return (
        "×".join(map(str, shape)), dim, f"{t['softmax'] * 1e6:.0f}",
        f"{t['sparsemax'] * 1e6:.0f}", f"{t['sparsemax'] / t['softmax']:.2f}×",
        f"{t['sparsemax fwd+bwd'] / t['softmax fwd+bwd']:.2f}×",
        f"{t['sparsemax'] / t['sparsemax, last dim']:.2f}×",
        f"{t['torch copies'] / t['sparsemax']:.2f}×",
        f"{t['torch copies fwd+bwd'] / t['sparsemax fwd+bwd']:.2f}×",
    )  # fmt: skip


def rows(times: dict) -> list[str]:
    header = ("shape", "dim", "softmax fwd (µs)", "sparsemax fwd (µs)", "÷ softmax fwd",
              "÷ softmax fwd+bwd", "÷ sparsemax along the last dim",
              "torch's copies ÷ tiles, fwd", "fwd+bwd")  # fmt: skip
    cells = [row(shape, dim, t) for (shape, dim), t in times.items()]
    return [
        f"{torch.get_num_threads()} threads. *÷ sparsemax along the last dim*: the cost of "
        "the layout (the same projection on a contiguous copy with the dim already last).",
        "",
        *markdown_table(header, cells),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("dims.md"))
    args = parser.parse_args()
    keep_freed_memory()
    times = {(s, d): case_times(s, d, args.repeats) for s, d in tqdm(CASES)}
    title = "Along another dimension"
    write_report(title, "bench_dims.py", args.repeats, rows(times), args.output)


if __name__ == "__main__":
    main()
