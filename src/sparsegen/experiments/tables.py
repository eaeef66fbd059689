"""The parts every report is built from: Markdown tables, CSV files, the plotting
back end and figure files, per-epoch curves, percentages and sparsegen-lin's support
trend."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from sparsegen._extras import needs_extra

if TYPE_CHECKING:
    from sparsegen.experiments.settings import Setting

__all__ = [
    "epoch_curves",
    "lin_support_finding",
    "markdown_table",
    "percent",
    "pyplot",
    "save_figure",
    "support_trend",
    "write_csv",
]


def write_csv(rows: Sequence[dict], path: Path) -> None:
    """``rows`` as CSV, the columns in first-seen order over all rows."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """The lines of a Markdown table: ``header``, the rule, then a line per row."""

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(map(str, cells)) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(row) for row in rows)]


def percent(share: float | None) -> str:
    """A share in [0, 1] as a percentage, ``"12.3 %"``; ``"—"`` where there is none."""
    return "—" if share is None else f"{100 * share:.1f} %"


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg back end: reports are drawn to files, often on
    machines with no display."""
    with needs_extra("experiments", "sparsegen's figures"):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, *, dpi: int = 110, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` (cropped to what is drawn, unless not ``tight``) and free it:
    pyplot keeps every open figure alive."""
    fig.savefig(path, dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    pyplot().close(fig)
    return path


def epoch_curves(ax: Any, curves: Iterable[tuple[str, Sequence[float], dict[str, Any]]]) -> None:
    """Each ``(label, value per epoch, line options)`` as a line over epochs 1, 2, …, with a
    marker at each epoch."""
    for label, values, options in curves:
        ax.plot(range(1, len(values) + 1), values, marker="o", label=label, **options)


def support_trend(rows: Sequence[dict], lam_of: Callable[[dict], float]) -> str:
    """``"λ=a: s, λ=b: t, … (falls monotonically)"``: sparsegen-lin's average support at
    each λ, in increasing λ (``lam_of(row)``), and whether it falls as λ grows (it should:
    the scale 1/(1−λ) grows)."""
    ordered = sorted(rows, key=lam_of)
    monotone = all(a["support"] >= b["support"] for a, b in itertools.pairwise(ordered))
    listed = ", ".join(f"λ={lam_of(r):g}: {r['support']:.2f}" for r in ordered)
    return f"{listed} ({'falls monotonically' if monotone else 'not monotone'})"


def lin_support_finding(per_setting: Sequence[dict], grid: Sequence[Setting]) -> list[str]:
    """The findings line on sparsegen-lin's support over its fixed λ (sparsemax counting as
    λ = 0), λ read from each row's :class:`Setting`; none with fewer than two such rows."""
    lams = {s.name: s.lam_value for s in grid if s.lam_value is not None}
    lin = [row for row in per_setting if row["setting"] in lams]
    if len(lin) < 2:
        return []
    trend = support_trend(lin, lambda row: lams[row["setting"]])
    return [f"- sparsegen-lin's support as λ grows: {trend}."]
