"""The ``sparsegen`` command."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from sparsegen.demo import demo


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value


def _folder(text: str) -> Path:
    """An output folder: named (an empty path would be the current directory), not a file."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder; got an empty path")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder")
    return path


def _readable(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return text


def _device(text: str) -> str:
    """A device torch knows and this machine has, so that no run fails on it later."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"unknown device {text!r}; expected cpu, cuda, cuda:1, ..."
        ) from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(
            f"{text}: no such CUDA device here ({torch.cuda.device_count()} found)"
        )
    return text


def _add_output(parser: argparse.ArgumentParser, default: Path | None = Path("results")) -> None:
    shown = f" (default {default})" if default else ""
    parser.add_argument("--out", type=_folder, default=default, help=f"output folder{shown}")


def _add_jobs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jobs", type=_positive_int, default=2, help="worker processes (default 2)"
    )


def _add_training(parser: argparse.ArgumentParser) -> None:
    """The options every model-training experiment takes."""
    parser.add_argument("--epochs", type=_positive_int, help="at most this many epochs per run")
    parser.add_argument("--data-home", type=Path, help="read the shipped text sets from here")
    parser.add_argument(
        "--device", type=_device, help="cpu, cuda, cuda:1, ... (default: CUDA when present)"
    )
    _add_jobs(parser)


def _writable(parser: argparse.ArgumentParser, folder: Path) -> None:
    """Make ``folder`` and check that files can be written there, before any work starts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".sparsegen-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        parser.error(f"--out {folder}: cannot write there ({error.strerror or error})")


def _datasets(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The datasets' folder names, each checked before any work starts."""
    from sparsegen.datasets.multilabel import dataset_layout

    names = []
    for name in args.datasets:
        try:
            names.append(dataset_layout(name, args.data_home)[0])
        except ValueError as error:
            parser.error(f"--datasets: {error}")
    return names


def _add_table2_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=["scene", "emotions", "birds", "cal500"],
        help="Table 2's benchmarks, any case (default: the four small ones shipped with the "
        "package; also medical, enron, reuters-k500, slower; rcv1, RCV1-v2 fetched by "
        "scikit-learn on first use, about a day of CPU and 2.2 GB per job; or any set in "
        "MULAN's or MEKA's layout under --data-home)",
    )
    parser.add_argument("--data-home", type=Path, help="read the ARFF files from here instead")
    parser.add_argument(
        "--shuffled-folds",
        action="store_true",
        help="also select with seeded shuffled folds (the replication that shows what the "
        "protocol's file-order folds do; doubles Table 2's time)",
    )


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as the command line shows it: the message, not the library's source line."""
    return f"sparsegen: {category.__name__}: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """The ``sparsegen`` command; returns its exit status."""
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        return _run(argv)
    except BrokenPipeError:
        # the reader left (``sparsegen demo | head``): stop quietly, as Unix tools do, and
        # keep Python from reporting the flush of the closed pipe at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        warnings.formatwarning = formatwarning


def _run(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="sparsegen",
        description="Sparse probability mappings: sparsemax and the sparsegen family.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "demo",
        help="print softmax, sparsemax, sparsegen-lin and sparsehourglass side by side",
        description="Print each mapping's output and support size on a few score vectors, "
        "showing exact zeros, λ's control of sparsity and the invariances.",
    )
    plot = commands.add_parser(
        "plot",
        help="draw the papers' pictures of the mappings (PNG)",
        description="Laha et al.'s Fig. 1 (contours of ρ₁(t₁, t₂, 0) for softmax, sparsemax, "
        "sum-normalization, sparsegen-lin at several λ, sparsehourglass at several q, "
        "sum-normalization++; contours.png), Fig. 2 (the support size of sparsegen-lin over "
        "the plane; sparsity_regions.png), Fig. 3 (the geometry of sparsecone and "
        "sparsehourglass; geometry.png), and Martins & Astudillo's 3-D view of ρ₁ as a "
        "surface for each mapping (surfaces.png).",
    )
    _add_output(plot)
    properties = commands.add_parser(
        "properties",
        help="compute Laha et al.'s Table 1 empirically, beside the paper's",
        description="Check idempotence, monotonicity, translation and scale invariance and "
        "the full domain of every mapping on seeded random inputs (K = 5), estimate its "
        "Lipschitz constant, and print the table beside the paper's with each disagreement "
        "(with --out, also as table1.md there).",
    )
    _add_output(properties, default=None)  # also writes table1.md there
    multilabel = commands.add_parser(
        "multilabel",
        help="reproduce Martins & Astudillo's Table 2 and Laha et al.'s synthetic experiments",
        description="Train linear multi-label classifiers with the papers' losses under the "
        "protocol of Martins & Astudillo's scripts (5-fold jackknife selection of the "
        "regularisation and of each prediction rule on the training set), score them on the "
        "test sets beside the papers' numbers, and rerun Laha et al.'s synthetic experiments. "
        "Writes table2.md/.csv, synthetic.md/.csv and synthetic_*.png to --out.",
    )
    _add_output(multilabel)
    _add_table2_data(multilabel)
    _add_jobs(multilabel)
    multilabel.add_argument(
        "--skip-synthetic", action="store_true", help="only the real-data table"
    )
    attention = commands.add_parser(
        "attention",
        help="train sparse and softmax attention on key-value retrieval; compare them",
        description="Train one attention layer with softmax, sparsemax, sparsegen-lin (several "
        "λ, and λ learnt) and sparsehourglass attention on a key-value retrieval task whose "
        "relevant position is known, over several seeds and two training budgets; report "
        "accuracy, attention support size and the mass on the relevant item "
        "(attention.md/.csv) and draw attention heatmaps (attention_heatmaps.png).",
    )
    _add_output(attention)
    attention.add_argument(
        "--seeds", type=_positive_int, default=5, help="seeds per run (default 5)"
    )
    _add_jobs(attention)
    translate = commands.add_parser(
        "translate",
        help="Laha et al.'s translation experiment: sparse attention in an RNN encoder-decoder",
        description="Train the attentional LSTM encoder-decoder with softmax, sparsemax and "
        "sparsegen-lin attention (the default reduced grid; --full-grid adds softmax with "
        "temperatures, more λ, λ learnt and sparsehourglass, and the scores scaled by 1/√256 "
        "as in scaled dot-product attention: T = 16, λ = −15) on Multi30k FR→EN and EN→FR "
        "(shipped) or on your parallel files, choose each mapping's parameter on validation "
        "BLEU and report test BLEU (sacreBLEU, beam 5) or ROUGE. Writes translation.md, "
        "translation.csv (every setting), translation_runs.csv (every run), "
        "translation_heatmaps.png, translation_curves.png and, under runs/translation/, a "
        "checkpoint per run: a rerun resumes.",
    )
    _add_output(translate)
    translate.add_argument(
        "--quick", action="store_true", help="FR→EN, 3 mappings, a subset, 3 epochs (minutes)"
    )
    translate.add_argument(
        "--direction",
        nargs="+",
        choices=["fr-en", "en-fr"],
        help="Multi30k directions (default both; with --quick, fr-en)",
    )
    for split in ("train", "valid", "test"):
        translate.add_argument(
            f"--{split}",
            nargs=2,
            type=_readable,
            metavar=("SOURCE", "TARGET"),
            help=f"your own {split} files (aligned lines) instead of Multi30k",
        )
    translate.add_argument("--metric", choices=["bleu", "rouge"], default="bleu")
    translate.add_argument(
        "--full-grid",
        action="store_true",
        help="Laha et al.'s whole grid and the scaled scores (hours on a CPU)",
    )
    translate.add_argument(
        "--lam-grid",
        nargs="+",
        type=float,
        metavar="λ",
        help="sparsegen-lin's λ values instead of the grid's (e.g. --lam-grid 0.5 0.75)",
    )
    translate.add_argument(
        "--only",
        nargs="+",
        metavar="SETTING",
        help="train only these settings of the grid, by the report's names "
        "(e.g. --full-grid --only 'sparsehourglass q=1' 'sparsegen-lin (learnt)')",
    )
    translate.add_argument("--seeds", type=_positive_int, default=1, help="seeds per setting")
    translate.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write the report from the runs already finished in --out",
    )
    _add_training(translate)
    nli = commands.add_parser(
        "nli",
        help="Martins & Astudillo's SNLI experiment: sparse attention in an entailment model",
        description="Train Rocktäschel et al.'s LSTM entailment model with no attention, "
        "softmax, sparsemax, sparsegen-lin (λ grid, λ learnt) and sparsehourglass attention "
        "over several seeds, choose λ/q on validation accuracy, and test on SNLI test. Trains on "
        "the shipped SNLI dev + MultiNLI dev (SNLI's training set is not shipped) or on --train. "
        "Writes nli.md, nli.csv (chosen settings), nli_grid.csv (every setting), nli_runs.csv "
        "(every run), nli_attention.png (the slides' four pairs), nli_curves.png and, under "
        "runs/nli/, a checkpoint per run: a rerun resumes.",
    )
    _add_output(nli)
    nli.add_argument("--quick", action="store_true", help="4 settings, 1 seed, a subset (~1 min)")
    nli.add_argument("--seeds", type=_positive_int, help="seeds per setting (default 3; quick 1)")
    nli.add_argument("--train", type=_readable, help="an SNLI-format training file instead")
    nli.add_argument("--glove", type=_readable, help="initialise embeddings from a GloVe file")
    _add_training(nli)
    bench = commands.add_parser(
        "bench",
        help="time the kernels against torch.softmax and entmax (ratios, same run)",
        description="Median forward and forward+backward times of sparsemax, sparsegen-lin and "
        "sparsehourglass against torch.softmax (and entmax's sparsemax when installed) on "
        "float32 (B, K) shapes, with 1 thread and all threads, printed as ratios measured in "
        "the same run; the full run adds thread scaling, peak memory and start-up times. "
        "Writes bench.md to --out.",
    )
    _add_output(bench)
    bench.add_argument("--quick", action="store_true", help="3 shapes, 5 repeats (seconds)")
    reproduce = commands.add_parser(
        "reproduce",
        help="run everything above and write one report (report.md) with every table and figure",
        description="Run demo, plot, properties, multilabel (Table 2 on the shipped MULAN sets, "
        "the synthetic experiments), attention, quick runs of translate and nli, and a quick "
        "bench, writing their files and a single markdown report, report.md, that embeds the "
        "tables and figures. Needs no download; about 9 minutes on 2 cores.",
    )
    _add_output(reproduce)
    _add_table2_data(reproduce)
    _add_jobs(reproduce)
    reproduce.add_argument(
        "--full-bench", action="store_true", help="the full speed benchmark (adds minutes)"
    )
    args = parser.parse_args(argv)
    if getattr(args, "out", None) is not None:
        _writable(commands.choices[args.command], args.out)
    if getattr(args, "datasets", None):
        args.datasets = _datasets(commands.choices[args.command], args)
    if args.command == "demo":
        print(demo())
    elif args.command == "plot":
        from sparsegen.plots import plot_all

        for path in plot_all(args.out):
            print(f"wrote {path}")
    elif args.command == "properties":
        from sparsegen.properties import table

        text = table()
        print(text)
        if args.out:
            (args.out / "table1.md").write_text(text)
    elif args.command == "multilabel":
        run_multilabel(args)
    elif args.command == "attention":
        from sparsegen.experiments.attention import run_attention

        run_attention(args.out, seeds=tuple(range(args.seeds)), n_jobs=args.jobs)
        print((args.out / "attention.md").read_text())
    elif args.command == "translate":
        run_translate(commands.choices["translate"], args)
    elif args.command == "nli":
        run_nli(commands.choices["nli"], args)
    elif args.command == "bench":
        from sparsegen.benchmark import run_benchmark

        args.out.mkdir(parents=True, exist_ok=True)
        text = run_benchmark(quick=args.quick, keep_freed=True)  # a process of its own
        (args.out / "bench.md").write_text(text)
        print(text)
    elif args.command == "reproduce":
        from sparsegen.report import reproduce

        path = reproduce(
            args.out,
            datasets=tuple(args.datasets),
            data_home=args.data_home,
            n_jobs=args.jobs,
            full_benchmark=args.full_bench,
            shuffled_folds=args.shuffled_folds,
        )
        print(f"wrote {path}")
    return 0


def run_translate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from sparsegen.experiments import translation

    given = [name for name in ("train", "valid", "test") if getattr(args, name)]
    if given and len(given) < 3:
        parser.error("--train, --valid and --test go together (each SOURCE TARGET)")
    if args.metric == "rouge":
        try:
            import rouge_score  # noqa: F401
        except ImportError:
            parser.error("--metric rouge needs rouge-score: pip install 'sparsegen[rouge]'")
    corpus = None
    if given:
        try:
            corpus = translation.files_corpus(args.train, args.valid, args.test)
        except ValueError as error:
            parser.error(str(error))
    config = translation.QUICK if args.quick else translation.TranslationConfig()
    config = replace(config, metric=args.metric, epochs=args.epochs or config.epochs)
    directions = args.direction or (["fr-en"] if args.quick else ["fr-en", "en-fr"])
    if args.full_grid:
        grid = translation.FULL_GRID
    else:
        grid = translation.QUICK_GRID if args.quick else translation.REDUCED_GRID
    if args.lam_grid:
        if any(not lam < 1 for lam in args.lam_grid):
            parser.error(f"--lam-grid: sparsegen-lin needs λ < 1; got {args.lam_grid}")
        grid = translation.with_lams(grid, args.lam_grid)
    if args.only:
        names = [s.name for s in grid]
        if unknown := [name for name in args.only if name not in names]:
            parser.error(f"--only: no setting {unknown} in this grid; its settings: {names}")
        grid = tuple(s for s in grid if s.name in args.only)
    translation.run_translation(
        args.out,
        quick=args.quick,
        directions=[tuple(d.split("-")) for d in directions],
        grid=grid,
        config=config,
        corpus=corpus,
        seeds=tuple(range(args.seeds)),
        data_home=args.data_home,
        n_jobs=args.jobs,
        device=args.device,
        finished_only=args.report_only,
    )
    report = args.out / "translation.md"
    if not report.exists():
        parser.error(f"no finished runs in {args.out}; run without --report-only first")
    print(report.read_text())


def run_nli(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from sparsegen.experiments import nli

    config = nli.config_from(args.quick, epochs=args.epochs, glove=args.glove)
    try:  # the data and GloVe files are read here, so that bad ones stop it before training
        prepared = nli.prepare(config, train_path=args.train, data_home=args.data_home)
    except ValueError as error:
        parser.error(str(error))
    nli.run_nli(
        args.out,
        quick=args.quick,
        seeds=tuple(range(args.seeds or (1 if args.quick else 3))),
        config=config,
        n_jobs=args.jobs,
        device=args.device,
        prepared=prepared,
    )
    print((args.out / "nli.md").read_text())


def run_multilabel(args: argparse.Namespace) -> None:
    from sparsegen.experiments import multilabel

    start = time.perf_counter()
    multilabel.run_table2(
        args.out,
        tuple(args.datasets),
        data_home=args.data_home,
        n_jobs=args.jobs,
        shuffled_folds=args.shuffled_folds,
    )
    print((args.out / "table2.md").read_text())
    if not args.skip_synthetic:
        multilabel.run_synthetic(args.out, n_jobs=args.jobs)
        print((args.out / "synthetic.md").read_text())
    print(f"wrote {args.out}/ in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
