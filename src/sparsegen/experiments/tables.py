"""Result tables the experiments write."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["support_trend", "write_csv"]


def write_csv(rows: Sequence[dict], path: Path) -> None:
    """``rows`` as CSV, the columns in first-seen order over all rows."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def support_trend(rows: Sequence[dict], lam_of: Callable[[dict], float]) -> str:
    """``"λ=a: s, λ=b: t, … (falls monotonically)"``: sparsegen-lin's average support at
    each λ, in increasing λ (``lam_of(row)``; sparsemax is λ = 0), and whether it falls
    as λ grows (it should: the scale 1/(1−λ) grows)."""
    ordered = sorted(rows, key=lam_of)
    monotone = all(a["support"] >= b["support"] for a, b in itertools.pairwise(ordered))
    listed = ", ".join(f"λ={lam_of(r):g}: {r['support']:.2f}" for r in ordered)
    return f"{listed} ({'falls monotonically' if monotone else 'not monotone'})"
