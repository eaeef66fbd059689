"""What the translation and NLI experiments share: settings, encoding with truncation,
runs in parallel processes with checkpoints, selection per family."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

from sparsegen._extras import needs_extra
from sparsegen.text import SubwordTokenizer

with needs_extra("experiments", __name__):
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

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


@dataclass(frozen=True)
class Setting:
    """One attention: a family name, the mapping (None = no attention), its parameter
    (``lam`` or ``q``, learnt from its start value with ``learnable``) and a temperature."""

    family: str
    mapping: str | None
    lam: float | None = None
    q: float | None = None
    learnable: bool = False
    temperature: float = 1.0

    @property
    def parameter(self) -> str:
        """``λ=0.5``, ``q=1``, ``T=0.5``, ``learnt``, or empty."""
        if self.learnable:
            return "learnt"
        if self.lam is not None:
            return f"λ={self.lam:g}"
        if self.q is not None:
            return f"q={self.q:g}"
        return f"T={self.temperature:g}" if self.temperature != 1.0 else ""

    @property
    def value(self) -> float | None:
        """The numeric parameter :attr:`parameter` shows: λ, q, or a temperature other than 1."""
        if self.lam is not None:
            return self.lam
        if self.q is not None:
            return self.q
        return self.temperature if self.temperature != 1.0 else None

    @property
    def lam_value(self) -> float | None:
        """sparsegen-lin's fixed λ, sparsemax being λ = 0; None for any other setting."""
        if self.family == "sparsemax":
            return 0.0
        return self.lam if self.family == "sparsegen-lin" and not self.learnable else None

    @property
    def name(self) -> str:
        if self.learnable:
            return f"{self.family} (learnt)"
        return f"{self.family} {self.parameter}".strip()

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in ".-" else "_" for c in self.name)


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


def _cached(job: Callable[..., dict], path: Path, threads: int, progress: bool, *args) -> dict:
    """``job(*args, checkpoint=...)``'s result as a row, read from ``path`` when a run already
    wrote it (a :class:`RunResult` is written as its ``to_row()``).
    A single process shows a progress bar per epoch (several would draw over each other)."""
    if path.exists():
        return json.loads(path.read_text())
    torch.set_num_threads(threads)
    result = job(*args, checkpoint=path.with_suffix(".pt"), progress=progress)
    row = result.to_row() if isinstance(result, RunResult) else result
    path.write_text(json.dumps(row))
    return row


def run_all(
    job: Callable[..., dict],
    tasks: Sequence[tuple[str, tuple]],
    folder: Path,
    *,
    n_jobs: int,
    description: str,
    finished_only: bool = False,
) -> list[dict]:
    """Run ``job(*args, checkpoint=folder/name.pt)`` for each ``(name, args)``.

    Runs spread over ``n_jobs`` processes of one thread each (a single job gets
    every thread); each writes ``folder/name.json`` when done, so an interrupted
    experiment reruns only what is missing, and a run cut mid-training resumes
    from its checkpoint. ``finished_only`` returns what finished runs wrote and
    trains nothing.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if finished_only:
        paths = [folder / f"{name}.json" for name, _ in tasks]
        return [json.loads(path.read_text()) for path in paths if path.exists()]
    threads = torch.get_num_threads() if n_jobs == 1 else 1
    calls = [
        delayed(_cached)(job, folder / f"{name}.json", threads, n_jobs == 1, *args)
        for name, args in tasks
    ]
    results = Parallel(n_jobs=n_jobs, return_as="generator")(calls)  # n_jobs=1: in process
    return list(tqdm(results, total=len(calls), desc=description))


def best_per_family(per_setting: Sequence[dict], key: str) -> list[dict]:
    """Each family's setting with the highest ``key`` (a validation score), in family order."""
    families = dict.fromkeys(row["family"] for row in per_setting)
    return [
        max((row for row in per_setting if row["family"] == family), key=lambda row: row[key])
        for family in families
    ]


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


@dataclass
class RunResult:
    """One trained run: its setting and seed, the validation score it was selected on,
    a score per test set, the attention's statistics (``support``, ``support_share``, …),
    per-epoch curves and what else the experiment keeps (``extra``).

    Each experiment names the columns of its files: a subclass's :meth:`to_row` and
    :meth:`from_row` write and read them, so run files and CSVs keep their layout."""

    setting: str
    family: str
    seed: int
    valid: float
    tests: dict[str, float]
    stats: dict[str, float]
    seconds: float
    best_epoch: int = 0
    epochs: int = 0
    learnt_lam: float | None = None
    curves: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_row(cls, row: dict) -> Self:
        raise NotImplementedError


@dataclass
class SettingSummary:
    """A setting's runs over seeds: means (and the test scores' sd and per-seed values)."""

    setting: Setting
    runs: list[RunResult]

    @property
    def seeds(self) -> int:
        return len(self.runs)

    def mean(self, values: Sequence[float]) -> float:
        return mean_sd(values)[0]

    @property
    def valid(self) -> float:
        return self.mean([r.valid for r in self.runs])

    def test(self, name: str) -> tuple[float, float, list[float]]:
        """The mean and sd of test set ``name``'s score, and its values in seed order."""
        mean, sd = mean_sd([r.tests[name] for r in self.runs])
        return mean, sd, [r.tests[name] for r in sorted(self.runs, key=lambda r: r.seed)]

    @property
    def tests(self) -> list[str]:
        """The test sets every run scored, in the first run's order."""
        return [t for t in self.runs[0].tests if all(t in r.tests for r in self.runs)]

    @property
    def stats(self) -> dict[str, float]:
        """The mean of each attention statistic every run recorded (older runs lack some)."""
        keys = [k for k in self.runs[0].stats if all(k in r.stats for r in self.runs)]
        return {k: self.mean([r.stats[k] for r in self.runs]) for k in keys}

    @property
    def learnt_lam(self) -> float | None:
        if not self.setting.learnable:
            return None
        return self.mean([r.learnt_lam for r in self.runs])


def summarise_runs(runs: Sequence[RunResult], grid: Sequence[Setting]) -> list[SettingSummary]:
    """The runs of each setting of ``grid``, in grid order."""
    return [SettingSummary(s, [r for r in runs if r.setting == s.name]) for s in grid]
