"""``sparsegen reproduce``: every runner in one go, ending in a single markdown report.

The report (``report.md``) embeds the tables the runners write and the figures
beside it, so the output directory is self-contained: open ``report.md`` in any
markdown viewer.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

import sparsegen
from sparsegen.experiments.tables import markdown_table

__all__ = ["reproduce"]


@dataclass
class Section:
    title: str
    intro: str
    run: Callable[[Path], str]  # writes its files into the directory, returns markdown


def _demoted(markdown: str) -> str:
    """Headings two levels down (``#`` → ``###``) so that they nest under the section's ``##``."""
    return "\n".join(
        "##" + line if line.startswith("#") else line for line in markdown.splitlines()
    )


def _figures(out: Path) -> str:
    from sparsegen.plots import plot_all

    captions = {
        "contours.png": "Laha et al., Fig. 1: contours of ρ₁(t₁, t₂, 0) for each mapping.",
        "sparsity_regions.png": "Laha et al., Fig. 2: support size of sparsegen-lin (λ = 0.5) "
        "beside sparsemax.",
        "geometry.png": "Laha et al., Fig. 3: the geometry of sparsecone and sparsehourglass "
        "(q = 1), with sample points carried through the construction.",
        "surfaces.png": "Martins & Astudillo's 3-D view: ρ₁(t₁, t₂, 0) as a surface.",
    }
    lines = []
    for path in plot_all(out):
        lines += [f"![{path.stem}]({path.name})", "", captions.get(path.name, ""), ""]
    return "\n".join(lines)


def _properties(out: Path) -> str:
    from sparsegen.properties import table

    text = table()
    (out / "table1.md").write_text(text)
    return text


def _demo(out: Path) -> str:
    from sparsegen.demo import demo

    return "```text\n" + demo() + "\n```"


def _bench(out: Path, *, quick: bool) -> str:
    from sparsegen.benchmark import run_benchmark

    text = run_benchmark(quick=quick)
    (out / "bench.md").write_text(text)
    return text


def _sections(
    *,
    datasets: tuple[str, ...],
    data_home: Path | None,
    n_jobs: int,
    full_benchmark: bool,
    attention_seeds: int,
    shuffled_folds: bool,
) -> list[Section]:
    """The report's sections in order, each bound to ``reproduce``'s options."""
    from sparsegen.experiments import multilabel
    from sparsegen.experiments.attention import run_attention
    from sparsegen.experiments.nli import run_nli
    from sparsegen.experiments.translation import QUICK_GRID, run_translation

    def table2(out: Path) -> str:
        multilabel.run_table2(
            out, datasets, data_home=data_home, n_jobs=n_jobs, shuffled_folds=shuffled_folds
        )
        return (out / "table2.md").read_text()

    def synthetic(out: Path) -> str:
        multilabel.run_synthetic(out, n_jobs=n_jobs)
        return (out / "synthetic.md").read_text()

    def attention(out: Path) -> str:
        run_attention(out, seeds=tuple(range(attention_seeds)), n_jobs=n_jobs)
        return (out / "attention.md").read_text()

    def translation(out: Path) -> str:
        # One one-thread process per model: they finish together, where fewer processes
        # would leave a core idle behind a lone last model whenever the count is odd.
        jobs = max(n_jobs, len(QUICK_GRID)) if n_jobs > 1 else 1
        run_translation(out, quick=True, directions=[("fr", "en")], n_jobs=jobs)
        return (out / "translation.md").read_text()

    def nli(out: Path) -> str:
        run_nli(out, quick=True, seeds=(0,), n_jobs=n_jobs)
        return (out / "nli.md").read_text()

    return [
        Section("The mappings side by side", "`sparsegen demo`", _demo),
        Section("Figures", "`sparsegen plot`", _figures),
        Section("Table 1: properties, computed", "`sparsegen properties`", _properties),
        Section("Table 2: multi-label classification", "`sparsegen multilabel`", table2),
        Section("Synthetic multi-label experiments", "`sparsegen multilabel`", synthetic),
        Section("Sparse attention", "`sparsegen attention`", attention),
        Section(
            "Sparse attention in translation (quick run)",
            "`sparsegen translate --quick`",
            translation,
        ),
        Section("Sparse attention for NLI (quick run)", "`sparsegen nli --quick`", nli),
        Section("Speed", "`sparsegen bench`", partial(_bench, quick=not full_benchmark)),
    ]


def _run_sections(sections: list[Section], out: Path) -> tuple[list[str], list[tuple[str, float]]]:
    """Run each section into ``out``; return the report body's lines and each section's seconds."""
    body: list[str] = []
    timings: list[tuple[str, float]] = []
    for number, section in enumerate(sections, start=1):
        print(f"[{number}/{len(sections)}] {section.title} ({section.intro})", flush=True)
        began = time.perf_counter()
        text = section.run(out)
        timings.append((section.title, time.perf_counter() - began))
        body += [f"## {number}. {section.title}", "", f"Made by {section.intro}.", ""]
        body += [_demoted(text), ""]
    return body, timings


def _header(total: float, timings: list[tuple[str, float]]) -> list[str]:
    """The report's title, environment line, papers and per-section timing table."""
    return [
        "# sparsegen: reproduction report",
        "",
        f"sparsegen {sparsegen.__version__}, torch {torch.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPU cores; made by `sparsegen "
        f"reproduce` in {total / 60:.1f} minutes.",
        "",
        "Papers: Martins & Astudillo (2016), *From softmax to sparsemax*; Laha et al. (2018), "
        "*On controllable sparse alternatives to softmax*. Every number below was computed "
        "by this run; the papers' numbers are printed beside ours where they exist.",
        "",
        *markdown_table(("section", "seconds"), [(t, f"{s:.0f}") for t, s in timings]),
        "",
    ]


def reproduce(
    out: Path,
    *,
    datasets: tuple[str, ...] = ("scene", "emotions", "birds", "cal500"),
    data_home: Path | None = None,
    n_jobs: int = 2,
    full_benchmark: bool = False,
    attention_seeds: int = 5,
    shuffled_folds: bool = False,
) -> Path:
    """Run the demo, figures, Table 1, Table 2, synthetic, attention (key-value retrieval and the
    quick translation and NLI runs) and speed; write report.md.

    Parameters
    ----------
    out : Path
        The directory for every file and the report.
    datasets : tuple of str
        Table 2's benchmarks (default: the four shipped with the package).
    data_home : Path, optional
        Read the ARFF files from here instead of the shipped copies.
    n_jobs : int
        Worker processes for the experiments (the quick translation run's
        models always train at once when ``n_jobs > 1``; 1 keeps everything in
        this process).
    full_benchmark : bool
        The full speed benchmark (all shapes, memory, start-up; minutes) instead
        of the quick one.
    attention_seeds : int
        Seeds per attention run.
    shuffled_folds : bool
        Table 2 also selects with seeded shuffled folds (doubles its time).
    """
    sections = _sections(
        datasets=datasets,
        data_home=data_home,
        n_jobs=n_jobs,
        full_benchmark=full_benchmark,
        attention_seeds=attention_seeds,
        shuffled_folds=shuffled_folds,
    )
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    body, timings = _run_sections(sections, out)
    header = _header(time.perf_counter() - start, timings)
    path = out / "report.md"
    path.write_text("\n".join(header + body))
    return path
