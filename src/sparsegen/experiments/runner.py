"""How every experiment runs its grid: runs spread over processes (checkpointed where a
run trains long), typed per-run results, their summary per setting and the selection of
each family's best setting. The experiments own only their data, model, metric and
findings."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

if TYPE_CHECKING:  # (typing.Self is Python 3.11's; annotations are strings here)
    from typing import Self

from sparsegen._extras import needs_extra
from sparsegen.experiments.settings import Setting

with needs_extra("experiments", __name__):
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

__all__ = [
    "RunResult",
    "Setting",
    "SettingSummary",
    "best_per_family",
    "check_plan",
    "fingerprint",
    "mean_sd",
    "run_all",
    "run_parallel",
    "summarise_grid",
    "summarise_runs",
    "untrained_note",
    "without_diverged",
]

T = TypeVar("T")


@dataclass
class RunResult:
    """One run: its setting and seed, the validation score it was selected on (if any),
    a score per test set, the statistics it measured (``support``, ``support_share``, …),
    per-epoch curves and what else the experiment keeps (``extra``).

    Each experiment names the columns of its files: a subclass's :meth:`to_row` and
    :meth:`from_row` write and read them, so run files and CSVs keep their layout."""

    setting: str
    family: str
    seed: int
    valid: float | None = None
    tests: dict[str, float] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
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


def run_parallel(
    job: Callable[..., T],
    calls: Sequence[tuple],
    *,
    n_jobs: int,
    description: str,
    ordered: bool = True,
    unit: str = "it",
) -> list[T]:
    """``job(*args)`` for each ``args`` of ``calls`` over ``n_jobs`` processes (1: in this
    one), with a progress bar; in ``calls``' order, or as they finish unless ``ordered``."""
    generator = "generator" if ordered else "generator_unordered"
    results = Parallel(n_jobs=n_jobs, return_as=generator)(delayed(job)(*args) for args in calls)
    return list(tqdm(results, total=len(calls), desc=description, unit=unit))


def _cached(job: Callable[..., Any], path: Path, threads: int, progress: bool, *args) -> dict:
    """``job(*args, checkpoint=...)``'s result as a row, read from ``path`` when a run already
    wrote it (a :class:`RunResult` is written as its ``to_row()``).
    A single process shows a progress bar per epoch (several would draw over each other)."""
    row = _finished(path)
    if row is not None:
        return row
    torch.set_num_threads(threads)
    result = job(*args, checkpoint=path.with_suffix(".pt"), progress=progress)
    row = result.to_row() if isinstance(result, RunResult) else result
    partial = path.with_name(path.name + ".partial")  # (a kill mid-write leaves no half file)
    partial.write_text(json.dumps(row))
    partial.replace(path)
    return row


def _finished(path: Path) -> dict | None:
    """The row a finished run wrote at ``path``; None where there is none: no file, or one
    that holds no run's row (garbled, or another program's), which a warning names and a
    run then writes anew."""
    if not path.exists():
        return None
    try:
        row = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        row = error
    if isinstance(row, dict) and "setting" in row:
        return row
    what = f"unreadable: {row}" if isinstance(row, Exception) else "no run's row"
    warnings.warn(f"{path} is no finished run ({what}); it is trained again", stacklevel=2)
    return None


def check_plan(fn: str, **parts: Sequence) -> None:
    """``ValueError`` naming ``fn`` and the part of its plan (``seeds``, ``grid``,
    ``methods``, ``datasets``…) that is empty: an empty grid read as "not given" ran the
    default one, and no seed wrote a report of means of nothing."""
    for name, values in parts.items():
        if not len(values):
            raise ValueError(f"{fn}: {name} is empty; give at least one")


def run_all(
    job: Callable[..., Any],
    tasks: Sequence[tuple[str, tuple]],
    folder: Path,
    *,
    n_jobs: int,
    description: str,
    finished_only: bool = False,
) -> list[dict]:
    """Run ``job(*args, checkpoint=...)`` for each ``(name, args)``.

    Runs spread over ``n_jobs`` processes of one thread each (a single job gets
    every thread); each writes ``folder/<name>-<digest>.json`` when done, so an
    interrupted experiment reruns only what is missing, and a run cut mid-training
    resumes from its checkpoint (``.pt`` beside it). The digest is :func:`fingerprint`'s
    of ``args``: a run is read back only for the setting, seed, configuration and data it
    was trained on, never for a command that changed one of them. ``finished_only``
    returns what finished runs wrote and trains nothing.
    """
    folder.mkdir(parents=True, exist_ok=True)
    digests: dict[int, bytes] = {}
    paths = [folder / f"{name}-{fingerprint(args, digests)}.json" for name, args in tasks]
    if finished_only:
        return [row for row in map(_finished, paths) if row is not None]
    threads = torch.get_num_threads() if n_jobs == 1 else 1
    calls = [
        (job, path, threads, n_jobs == 1, *args)
        for path, (_, args) in zip(paths, tasks, strict=True)
    ]
    return run_parallel(_cached, calls, n_jobs=n_jobs, description=description)


def fingerprint(args: tuple, digests: dict[int, bytes] | None = None) -> str:
    """A short digest of what a run's result depends on, from its arguments: its
    dataclasses (setting, configuration and prepared data, every split's texts, token
    ids and labels included: a changed validation or test file is a changed run) and
    its plain numbers (the seed). Plain strings (the device) are left out.
    ``digests`` keeps each dataclass's digest by ``id``, for the calls of one grid
    (whose runs share one prepared data set)."""
    digests = {} if digests is None else digests
    digest = hashlib.sha256()
    for arg in args:
        if dataclasses.is_dataclass(arg):
            if id(arg) not in digests:
                part = hashlib.sha256()
                _feed(part, arg)
                digests[id(arg)] = part.digest()
            digest.update(digests[id(arg)])
        elif isinstance(arg, int | float):
            _feed(digest, arg)
    return digest.hexdigest()[:12]


def _feed(digest: Any, value: Any) -> None:
    if dataclasses.is_dataclass(value):
        digest.update(type(value).__name__.encode())
        for item in dataclasses.fields(value):
            digest.update(item.name.encode())
            _feed(digest, getattr(value, item.name))
    elif isinstance(value, dict):
        for key, item in value.items():
            digest.update(repr(key).encode())
            _feed(digest, item)
    elif isinstance(value, list | tuple) and any(dataclasses.is_dataclass(v) for v in value):
        for item in value:
            _feed(digest, item)
    elif isinstance(value, torch.Tensor | np.ndarray):
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        digest.update(repr((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    elif isinstance(value, bytes):
        digest.update(value)
    elif isinstance(value, str | int | float | bool | list | tuple | Path | type(None)):
        digest.update(repr(value).encode())  # (lists of texts or ids: one C-level repr)


def best_per_family(per_setting: Sequence[dict], key: str) -> list[dict]:
    """Each family's setting with the highest ``key`` (a validation score), in family order;
    one whose score is not finite (its runs diverged) only where every one is so."""
    families = dict.fromkeys(row["family"] for row in per_setting)
    return [
        max(
            (row for row in per_setting if row["family"] == family),
            key=lambda row: (math.isfinite(row[key]), row[key] if math.isfinite(row[key]) else 0),
        )
        for family in families
    ]


def without_diverged(
    chosen: Sequence[dict], per_setting: Sequence[dict], key: str
) -> tuple[list[dict], list[dict], list[str]]:
    """The chosen and per-setting rows whose validation mean ``key`` is finite, which the
    findings compare, and a findings line naming the families left out: every setting of
    theirs has a run that never trained (:func:`untrained_note`), whose figures are an
    untrained model's. No line where none is left out."""
    trained = [row for row in chosen if math.isfinite(row[key])]
    left_out = [row["family"] for row in chosen if not math.isfinite(row[key])]
    line = (
        f"- Left out of the findings: {', '.join(left_out)}, every setting of which has a run "
        "that never trained."
    )
    settings = [row for row in per_setting if math.isfinite(row[key])]
    return trained, settings, [line] if left_out else []


def untrained_note(runs: Sequence[RunResult]) -> list[str]:
    """A report's warning of the runs no epoch of which beat their initial weights (the
    training loss was NaN or infinite from the first epoch, or no validation score was
    finite: their selection score is still -inf, which tells them, where ``best_epoch``
    would not in run files older than that field): their figures are an untrained model's.
    Nothing where there are none."""
    never = [
        f"{run.setting} (seed {run.seed})"
        for run in runs
        if run.valid is not None and not math.isfinite(run.valid)
    ]
    if not never:
        return []
    more = " …" if len(never) > 6 else ""
    return [
        f"**{len(never)} of {len(runs)} runs never improved on their initial weights**: "
        f"{', '.join(never[:6])}{more}. Their training diverged from the first epoch (or no "
        "validation score was finite), so their figures below are an untrained model's; a "
        "smaller learning rate or gradient clip may help.",
        "",
    ]


def mean_sd(values: Sequence[float], ddof: int = 1) -> tuple[float, float]:
    """The mean and the standard deviation (``ddof``: 1, the sample's; 0, the population's)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=ddof)) if len(values) > 1 else 0.0


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


def summarise_grid(
    rows: Sequence[RunResult | dict],
    grid: Sequence[Setting],
    run_type: type[RunResult],
    setting_row: Callable[[SettingSummary], dict],
    key: str,
) -> tuple[list[dict], list[dict]]:
    """Per setting of ``grid``, ``setting_row`` of its runs (rows read as ``run_type``);
    per family, the setting with the highest ``key`` (a validation mean)."""
    runs = [r if isinstance(r, run_type) else run_type.from_row(r) for r in rows]
    per_setting = [setting_row(summary) for summary in summarise_runs(runs, grid)]
    return per_setting, best_per_family(per_setting, key)
