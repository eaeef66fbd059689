"""What the translation and NLI experiments share beyond the runner: encoding sentences
with truncation. The runner's names (:mod:`sparsegen.experiments.runner`) and
:class:`~sparsegen.experiments.settings.Setting` are importable from here too."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from sparsegen.experiments.runner import (
    RunResult,
    SettingSummary,
    best_per_family,
    mean_sd,
    run_all,
    summarise_runs,
)
from sparsegen.experiments.settings import Setting
from sparsegen.text import SubwordTokenizer

__all__ = [
    "RunResult",
    "Setting",
    "SettingSummary",
    "best_per_family",
    "encode",
    "mean_sd",
    "run_all",
    "summarise_runs",
]


def encode(
    tokenizer: SubwordTokenizer, sentences: Sequence[str], max_tokens: int, what: str
) -> list[list[int]]:
    """Piece ids, cut at ``max_tokens`` (a warning counts the sentences cut)."""
    ids = tokenizer.encode(sentences)
    cut = sum(len(seq) > max_tokens for seq in ids)
    if cut:
        warnings.warn(
            f"{cut} of {len(ids)} {what} sentences are longer than {max_tokens} tokens and "
            "were truncated",
            stacklevel=2,
        )
    return [seq[:max_tokens] for seq in ids]
