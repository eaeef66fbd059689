"""The mappings side by side on a few score vectors (``sparsegen demo``)."""

from __future__ import annotations

import torch

import sparsegen as sg

__all__ = ["DEMO_MAPPINGS", "DEMO_VECTORS", "demo"]

DEMO_VECTORS = {
    "a leader": [1.5, 1.0, 0.2, -1.0],
    "the same shifted by +100": [101.5, 101.0, 100.2, 99.0],
    "the same scaled by 10": [15.0, 10.0, 2.0, -10.0],
    "near uniform": [0.10, 0.05, 0.0, -0.05],
}

DEMO_MAPPINGS = {
    "softmax": sg.softmax,
    "sparsemax": sg.sparsemax,
    "sparsegen-lin λ=0.5": lambda z: sg.sparsegen_lin(z, lam=0.5),
    "sparsegen-lin λ=-1": lambda z: sg.sparsegen_lin(z, lam=-1.0),
    "sparsehourglass q=0.1": lambda z: sg.sparsehourglass(z, q=0.1),
    "sum-normalization++": sg.sum_normalization_pp,
}


def demo() -> str:
    """A side-by-side of the mappings' outputs and support sizes on a few vectors."""
    lines = []
    width = max(map(len, DEMO_MAPPINGS))
    for label, values in DEMO_VECTORS.items():
        z = torch.tensor(values, dtype=torch.float64)
        lines.append(f"z = {values}  ({label})")
        for name, mapping in DEMO_MAPPINGS.items():
            p = mapping(z)
            shown = "  ".join(f"{v:6.3f}" for v in p.tolist())
            lines.append(f"  {name:<{width}}  [{shown}]  support {int((p > 0).sum())}/{p.numel()}")
        lines.append("")
    return "\n".join(lines)
