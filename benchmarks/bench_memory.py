"""What autograd keeps for each mapping's backward, ÷ what it keeps for torch.softmax's.

One call on 1024×512 scores that require grad; every tensor autograd saves for the
backward is counted (``torch.autograd.graph.saved_tensors_hooks``), in float32, in
float32 with 10% of the entries masked, and in bfloat16. softmax keeps its output; a
sparse mapping keeps its output and a support size per row, and what else its gradient
needs. Writes benchmarks/memory.md.

    python benchmarks/bench_memory.py
"""

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

import sparsegen as sg
from sparsegen.benchmark import markdown_table

SHAPE = (1024, 512)
LEARNT = torch.full((SHAPE[0], 1), 0.5, requires_grad=True)
MAPPINGS: dict[str, Callable[..., torch.Tensor]] = {
    "sparsemax": lambda z, **kw: sg.sparsemax(z, **kw),
    "sparsegen-lin λ=0.5": lambda z, **kw: sg.sparsegen_lin(z, lam=0.5, **kw),
    "sparsegen-lin, learnt λ": lambda z, **kw: sg.sparsegen_lin(z, lam=LEARNT, **kw),
    "sparsegen-exp λ=0.5": lambda z, **kw: sg.sparsegen_exp(z, lam=0.5, **kw),
    "sparsegen-sq λ=0.5": lambda z, **kw: sg.sparsegen_sq(z, lam=0.5, **kw),
    "sparsecone q=1": lambda z, **kw: sg.sparsecone(z, q=1.0, **kw),
    "sparsecone, learnt q": lambda z, **kw: sg.sparsecone(z, q=LEARNT, **kw),
    "sparsehourglass q=1": lambda z, **kw: sg.sparsehourglass(z, q=1.0, **kw),
    "sparsehourglass, learnt q": lambda z, **kw: sg.sparsehourglass(z, q=LEARNT, **kw),
    "sum-normalization++": lambda z, **kw: sg.sum_normalization_pp(z, **kw),
}
VARIANTS = ("float32", "float32, masked", "bfloat16")


def saved_bytes(f: Callable[..., torch.Tensor], *args, **kwargs) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        f(*args, **kwargs)
    return total


def ratios() -> dict[str, dict[str, float]]:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(SHAPE, generator=generator) + 0.5  # (in sparsecone's domain)
    mask = torch.rand(SHAPE, generator=generator) > 0.1
    table: dict[str, dict[str, float]] = {}
    for variant in VARIANTS:
        z = scores.to(torch.bfloat16 if variant == "bfloat16" else torch.float32)
        z.requires_grad_()
        softmax = saved_bytes(torch.softmax, z, -1)
        kept = mask if "masked" in variant else None
        for name, mapping in MAPPINGS.items():
            table.setdefault(name, {})[variant] = saved_bytes(mapping, z, mask=kept) / softmax
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(__file__).with_name("memory.md")
    parser.add_argument("--output", type=Path, default=default)
    args = parser.parse_args()
    table = ratios()
    rows = markdown_table(
        ("mapping", *(f"{variant} ÷ softmax" for variant in VARIANTS)),
        [(name, *(f"{r[v]:.2f}×" for v in VARIANTS)) for name, r in table.items()],
    )
    b, k = SHAPE
    text = "\n".join(
        [
            "# What autograd keeps for the backward",
            "",
            f"torch {torch.__version__}, sparsegen {sg.__version__}; "
            "`python benchmarks/bench_memory.py`.",
            "",
            f"Bytes of the tensors autograd saves for one call's backward on {b}×{k} scores "
            "that require grad, ÷ those of `torch.softmax` on the same scores (its output). "
            "A mask is a bool tensor of the scores' shape, counted where a `where` keeps it. "
            "On the CPU bfloat16 scores are projected in float32 (the compiled kernels' "
            "dtype), whose output is kept, against softmax's bfloat16 one: 2× by itself.",
            "",
            *rows,
            "",
        ]
    )
    print(text)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
