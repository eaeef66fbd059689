"""Result tables the experiments write."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

__all__ = ["write_csv"]


def write_csv(rows: Sequence[dict], path: Path) -> None:
    """``rows`` as CSV, the columns in first-seen order over all rows."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
