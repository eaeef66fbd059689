"""The ``sparsegen`` command."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsegen._extras import MissingExtra, needs_extra
from sparsegen.demo import demo
from sparsegen.experiments.flags import (
    CONFIG_READERS,
    count,
    even_positive_int,
    finite_number,
    positive_int,
)

if TYPE_CHECKING:  # the experiments are imported when their command runs
    from sparsegen.experiments.settings import Setting
    from sparsegen.experiments.translation import Corpus


def _folder(text: str) -> Path:
    """An output folder: named (an empty path would be the current directory), not a file."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder; got an empty path")
    return _data_home(text)


def _readable(text: str) -> str:
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file")
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return text


def _data_home(text: str) -> Path:
    """A folder to read data from, or to write to, not a file (one that does not exist is
    reported where it is read, naming the file looked for, or made where it is written)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder")
    return path


def _device(text: str) -> str:
    """A device torch knows and this machine has, so that no run fails on it later."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"unknown device {text!r}; expected cpu, cuda, cuda:1, ..."
        ) from None
    if device.type == "cpu":
        return text
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu, …
    available = getattr(backend, "is_available", lambda: False)()
    count = getattr(backend, "device_count", lambda: 1)() if available else 0
    if (device.index or 0) >= count:
        raise argparse.ArgumentTypeError(
            f"{text}: no such {device.type} device here ({count} found)"
        )
    return text


# A negative number as a flag's value: argparse's own pattern takes -1 and -0.5 but reads
# -1e3, -1E-4 and -inf as unknown flags; no flag of ours starts with a digit or "inf".
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity)$", re.I)


class _Command(argparse.ArgumentParser):
    """A command's parser: ``args.error`` stops with its usage line, exit status 2.

    ``declare`` adds the flags when the command is parsed, not when the whole parser is
    built: translate's and nli's come from their experiment's config class, whose module
    needs the experiments extra, and ``sparsegen demo`` and ``sparsegen --help`` must not.
    """

    def __init__(
        self, *args: Any, declare: Callable[[_Command], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._declare = declare
        self._negative_number_matcher = _NEGATIVE_NUMBER
        self.set_defaults(error=self.error)

    def declared(self) -> _Command:
        """This parser with all its flags."""
        if self._declare is not None:
            declare, self._declare = self._declare, None
            declare(self)
        return self

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self.declared()
        return super().parse_known_args(args, namespace)


Commands = argparse._SubParsersAction  # what each command adds its parser to


def _add_output(parser: argparse.ArgumentParser, default: Path | None = Path("results")) -> None:
    shown = f" (default {default})" if default else ""
    parser.add_argument("--out", type=_folder, default=default, help=f"output folder{shown}")


def _add_jobs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=_jobs, default=2, help="worker processes (default 2)")


def _jobs(text: str) -> int:
    """A positive count of worker processes, at most the cores here: each worker holds a
    model and its data, and more than the cores only share them."""
    jobs, cores = positive_int(text), os.cpu_count() or 1
    if jobs > cores:
        raise argparse.ArgumentTypeError(f"at most the {cores} cores here; got {jobs}")
    return jobs


def _add_training(parser: argparse.ArgumentParser) -> None:
    """The options every model-training experiment takes besides its config's."""
    parser.add_argument("--data-home", type=_data_home, help="read the shipped text sets from here")
    parser.add_argument(
        "--device", type=_device, help="cpu, cuda, cuda:1, ... (default: CUDA when present)"
    )
    _add_jobs(parser)


# The benchmarks of Table 2 a command runs without --datasets: the four small shipped ones.
TABLE2_DATASETS = ("scene", "emotions", "birds", "cal500")


def _add_table2_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--datasets",
        nargs="+",
        action="extend",  # (a second --datasets adds to the first, not replaces it)
        default=None,  # (extend would add to a default list: TABLE2_DATASETS, set in _run)
        help="Table 2's benchmarks, any case (default: the four small ones shipped with the "
        "package; also medical, enron, reuters-k500, slower; rcv1, RCV1-v2 fetched by "
        "scikit-learn on first use, about a day of CPU and 2.2 GB per job; or any set in "
        "MULAN's or MEKA's layout under --data-home)",
    )
    parser.add_argument(
        "--data-home", type=_data_home, help="read the ARFF files from here instead"
    )
    parser.add_argument(
        "--shuffled-folds",
        action="store_true",
        help="also select with seeded shuffled folds (the replication that shows what the "
        "protocol's file-order folds do; doubles Table 2's time)",
    )


def _writable(args: argparse.Namespace) -> None:
    """Make ``--out`` and check that files can be written there, before any work starts."""
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        probe = args.out / ".sparsegen-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        args.error(f"--out {args.out}: cannot write there ({error.strerror or error})")


def _datasets(args: argparse.Namespace) -> list[str]:
    """The datasets' folder names, each read once before any work starts (a missing,
    truncated or malformed file is one line naming it, not a traceback after the first
    experiments); a fetched set is downloaded by its experiment."""
    from sparsegen.datasets.multilabel import FETCHED, dataset_layout
    from sparsegen.experiments.multilabel import load_split

    names: list[str] = []
    for name in args.datasets:
        try:
            folder = dataset_layout(name, args.data_home)[0]
            if folder in names:
                continue  # (a name given twice, in any case, runs once)
            names.append(folder)
            if folder not in FETCHED:
                load_split(folder, args.data_home)
        except (OSError, ValueError) as error:
            args.error(f"--datasets {name}: {error}")
    return names


def _demo(commands: Commands) -> None:
    parser = commands.add_parser(
        "demo",
        help="print softmax, sparsemax, sparsegen-lin, sparsehourglass and "
        "sum-normalization++ side by side",
        description="Print each mapping's output and support size on a few score vectors, "
        "showing exact zeros, λ's control of sparsity and the invariances.",
    )
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> None:
    print(demo())


def _plot(commands: Commands) -> None:
    parser = commands.add_parser(
        "plot",
        help="draw the papers' pictures of the mappings (PNG)",
        description="Laha et al.'s Fig. 1 (contours of ρ₁(t₁, t₂, 0) for softmax, sparsemax, "
        "sum-normalization, sparsegen-lin at several λ, sparsehourglass at several q, "
        "sum-normalization++; contours.png), Fig. 2 (the support size of sparsegen-lin over "
        "the plane; sparsity_regions.png), Fig. 3 (the geometry of sparsecone and "
        "sparsehourglass; geometry.png), and Martins & Astudillo's 3-D view of ρ₁ as a "
        "surface for each mapping (surfaces.png).",
    )
    _add_output(parser)
    parser.set_defaults(run=_run_plot)


def _run_plot(args: argparse.Namespace) -> None:
    from sparsegen.plots import plot_all

    for path in plot_all(args.out):
        print(f"wrote {path}")


def _properties(commands: Commands) -> None:
    parser = commands.add_parser(
        "properties",
        help="compute Laha et al.'s Table 1 empirically, beside the paper's",
        description="Check idempotence, monotonicity, translation and scale invariance and "
        "the full domain of every mapping on seeded random inputs (K = 5), estimate its "
        "Lipschitz constant, and print the table beside the paper's with each disagreement "
        "(with --out, also as table1.md there).",
    )
    _add_output(parser, default=None)  # printing is the point; a file only when asked
    parser.set_defaults(run=_run_properties)


def _run_properties(args: argparse.Namespace) -> None:
    from sparsegen.properties import table

    text = table()
    print(text)
    if args.out:
        (args.out / "table1.md").write_text(text)


def _multilabel(commands: Commands) -> None:
    parser = commands.add_parser(
        "multilabel",
        help="reproduce Martins & Astudillo's Table 2 and Laha et al.'s synthetic experiments",
        description="Train linear multi-label classifiers with the papers' losses under the "
        "protocol of Martins & Astudillo's scripts (5-fold jackknife selection of the "
        "regularisation and of each prediction rule on the training set), score them on the "
        "test sets beside the papers' numbers, and rerun Laha et al.'s synthetic experiments. "
        "Writes table2.md/.csv, synthetic.md/.csv and synthetic_*.png to --out.",
    )
    _add_output(parser)
    _add_table2_data(parser)
    _add_jobs(parser)
    parser.add_argument("--skip-synthetic", action="store_true", help="only the real-data table")
    parser.set_defaults(run=_run_multilabel)


def _run_multilabel(args: argparse.Namespace) -> None:
    from sparsegen.experiments import multilabel

    start = time.perf_counter()
    with _fetched(args):
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


def _attention(commands: Commands) -> None:
    parser = commands.add_parser(
        "attention",
        help="train sparse and softmax attention on key-value retrieval; compare them",
        description="Train one attention layer with softmax, sparsemax, sparsegen-lin (several "
        "λ, and λ learnt) and sparsehourglass attention on a key-value retrieval task whose "
        "relevant position is known, over several seeds and two training budgets; report "
        "accuracy, attention support size and the mass on the relevant item "
        "(attention.md/.csv) and draw attention heatmaps (attention_heatmaps.png).",
    )
    _add_output(parser)
    parser.add_argument("--seeds", type=positive_int, default=5, help="seeds per run (default 5)")
    _add_jobs(parser)
    parser.set_defaults(run=_run_attention)


def _run_attention(args: argparse.Namespace) -> None:
    from sparsegen.experiments.attention import run_attention

    run_attention(args.out, seeds=tuple(range(args.seeds)), n_jobs=args.jobs)
    print((args.out / "attention.md").read_text())


def _translate(commands: Commands) -> None:
    parser = commands.add_parser(
        "translate",
        declare=_translate_flags,
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
    parser.set_defaults(run=_run_translate)


def _translate_flags(parser: _Command) -> None:
    from sparsegen.experiments import flags, translation

    _add_output(parser)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="FR→EN, softmax and sparsemax on the scores and on the scores ÷ 16, a subset, "
        "3 epochs (minutes)",
    )
    parser.add_argument(
        "--direction",
        nargs="+",
        action="extend",
        choices=["fr-en", "en-fr"],
        help="Multi30k directions (default both; with --quick, fr-en)",
    )
    for split in ("train", "valid", "test"):
        parser.add_argument(
            f"--{split}",
            nargs=2,
            type=_readable,
            metavar=("SOURCE", "TARGET"),
            help=f"your own {split} files (aligned lines) instead of Multi30k",
        )
    _translate_grid_flags(parser)
    parser.add_argument("--seeds", type=positive_int, default=1, help="seeds per setting")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write the report from the runs already finished in --out",
    )
    flags.add_config_flags(
        parser,
        translation.TranslationConfig,
        presets={"--quick": translation.QUICK},
        types={**CONFIG_READERS, "hidden_dim": even_positive_int},
    )
    _add_training(parser)


def _translate_grid_flags(parser: _Command) -> None:
    parser.add_argument(
        "--full-grid",
        action="store_true",
        help="Laha et al.'s whole grid and the scaled scores (hours on a CPU)",
    )
    parser.add_argument(
        "--lam-grid",
        nargs="+",
        action="extend",
        type=finite_number,
        metavar="λ",
        help="sparsegen-lin's λ values instead of the grid's (e.g. --lam-grid 0.5 0.75)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        action="extend",
        metavar="SETTING",
        help="train only these settings of the grid, by the report's names "
        "(e.g. --full-grid --only 'sparsehourglass q=1' 'sparsegen-lin (learnt)')",
    )


def _run_translate(args: argparse.Namespace) -> None:
    from sparsegen.experiments import flags, translation

    base = translation.QUICK if args.quick else None
    config = flags.config_from_args(translation.TranslationConfig, args, base)
    if config.metric == "rouge":
        try:
            import rouge_score  # noqa: F401
        except ImportError:
            args.error("--metric rouge needs rouge-score: pip install 'sparsegen[rouge]'")
    if config.beam > config.vocab_size:  # (each hypothesis its own piece at the first step)
        args.error(f"--beam {config.beam}: at most --vocab-size ({config.vocab_size})")
    corpus = _own_corpus(args)
    if corpus is None:
        _check_multi30k(args)
    elif args.direction or args.data_home:  # (the files say the direction and where they are)
        flag = "--direction" if args.direction else "--data-home"
        args.error(f"{flag} is Multi30k's; --train, --valid and --test say SOURCE TARGET")
    if args.direction and len(set(args.direction)) < len(args.direction):
        args.error(f"--direction: each direction once; got {' '.join(args.direction)}")
    directions = args.direction or (["fr-en"] if args.quick else ["fr-en", "en-fr"])
    finished = translation.run_translation(
        args.out,
        quick=args.quick,
        directions=[tuple(d.split("-")) for d in directions],
        grid=_translation_grid(args),
        config=config,
        corpus=corpus,
        seeds=tuple(range(args.seeds)),
        data_home=args.data_home,
        n_jobs=args.jobs,
        device=args.device,
        finished_only=args.report_only,
    )
    if args.report_only and not finished:  # (a report there is another run's: other flags)
        args.error(
            f"no finished runs in {args.out} for these flags; run without --report-only first"
        )
    print((args.out / "translation.md").read_text())


def _check_multi30k(args: argparse.Namespace) -> None:
    """Read Multi30k now (both directions read the same files), so that a bad --data-home
    stops the run with its file and line, before anything trains."""
    from sparsegen.experiments import translation

    try:
        translation.multi30k(data_home=args.data_home)
    except (OSError, ValueError) as error:
        args.error(str(error))


def _own_corpus(args: argparse.Namespace) -> Corpus | None:
    """The corpus of --train, --valid and --test, read now so that bad files stop the run."""
    from sparsegen.experiments import translation

    given = [name for name in ("train", "valid", "test") if getattr(args, name)]
    if not given:
        return None  # Multi30k
    if len(given) < 3:
        args.error("--train, --valid and --test go together (each SOURCE TARGET)")
    try:
        return translation.files_corpus(args.train, args.valid, args.test)
    except ValueError as error:
        args.error(str(error))


def _translation_grid(args: argparse.Namespace) -> tuple[Setting, ...]:
    """The settings to train: the grid --full-grid/--quick choose, with --lam-grid, --only."""
    from sparsegen.experiments import translation

    if args.full_grid:
        grid = translation.FULL_GRID
    else:
        grid = translation.QUICK_GRID if args.quick else translation.REDUCED_GRID
    if args.lam_grid:
        if any(not lam < 1 for lam in args.lam_grid):
            args.error(f"--lam-grid: sparsegen-lin needs λ < 1; got {args.lam_grid}")
        if len(set(args.lam_grid)) < len(args.lam_grid):  # (a run counted twice in the table)
            args.error(f"--lam-grid: each λ once; got {args.lam_grid}")
        grid = translation.with_lams(grid, args.lam_grid)
    if args.only:
        names = [s.name for s in grid]
        if unknown := [name for name in args.only if name not in names]:
            args.error(f"--only: no setting {unknown} in this grid; its settings: {names}")
        grid = tuple(s for s in grid if s.name in args.only)
    return grid


def _nli(commands: Commands) -> None:
    parser = commands.add_parser(
        "nli",
        declare=_nli_flags,
        help="Martins & Astudillo's SNLI experiment: sparse attention in an entailment model",
        description="Train Rocktäschel et al.'s LSTM entailment model with no attention, "
        "softmax, sparsemax, sparsegen-lin (λ grid, λ learnt) and sparsehourglass attention "
        "over several seeds, choose λ/q on validation accuracy, and test on SNLI test. Trains on "
        "the shipped SNLI dev + MultiNLI dev (SNLI's training set is not shipped) or on --train. "
        "Writes nli.md, nli.csv (chosen settings), nli_grid.csv (every setting), nli_runs.csv "
        "(every run), nli_attention.png (the slides' four pairs), nli_curves.png and, under "
        "runs/nli/, a checkpoint per run: a rerun resumes.",
    )
    parser.set_defaults(run=_run_nli)


def _nli_flags(parser: _Command) -> None:
    from sparsegen.experiments import flags, nli

    _add_output(parser)
    parser.add_argument(
        "--quick", action="store_true", help="4 settings, 1 seed, a subset (~1 min)"
    )
    parser.add_argument("--seeds", type=positive_int, help="seeds per setting (default 3; quick 1)")
    parser.add_argument("--train", type=_readable, help="an SNLI-format training file instead")
    flags.add_config_flags(
        parser,
        nli.NLIConfig,
        presets={"--quick": nli.QUICK},
        types={**CONFIG_READERS, "glove": _readable},
    )
    _add_training(parser)


def _run_nli(args: argparse.Namespace) -> None:
    from sparsegen.experiments import flags, nli

    config = flags.config_from_args(nli.NLIConfig, args, nli.QUICK if args.quick else None)
    try:  # the data and GloVe files are read here, so that bad ones stop it before training
        prepared = nli.prepare(config, train_path=args.train, data_home=args.data_home)
    except (OSError, ValueError) as error:
        args.error(str(error))
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


def _hf(commands: Commands) -> None:
    parser = commands.add_parser(
        "hf",
        declare=_hf_flags,
        help="a worked example: sparse attention in a Hugging Face GPT-2 trained from scratch",
        description="Train a tiny transformers GPT-2 language model on Multi30k's English "
        "captions (shipped) with softmax (transformers' sdpa), sparsemax, sparsegen-lin at a "
        "fixed λ (a scale multiplier) and λ learnt, through "
        "sparsegen.integrations.transformers, the same steps, batches and seeds; report "
        "validation and test perplexity, the attention's support at step 0 and at the end, and "
        "the step time. Writes hf.md, hf.csv (per setting), hf_runs.csv (per run) and, under "
        "runs/hf/, a file per finished run: a rerun trains only what is missing. Needs "
        "sparsegen[transformers].",
    )
    parser.set_defaults(run=_run_hf)


def _hf_flags(parser: _Command) -> None:
    from sparsegen.experiments import flags, hf

    _add_output(parser)
    parser.add_argument(
        "--quick", action="store_true", help="a smaller model, a subset, 200 steps (~2 min)"
    )
    parser.add_argument("--seeds", type=positive_int, default=1, help="seeds per setting")
    flags.add_config_flags(
        parser,
        hf.HFConfig,
        presets={"--quick": hf.QUICK},
        types={**CONFIG_READERS, "warmup": count},
    )
    _add_training(parser)


def _run_hf(args: argparse.Namespace) -> None:
    from sparsegen.experiments import flags, hf

    config = flags.config_from_args(hf.HFConfig, args, hf.QUICK if args.quick else None)
    if not config.lam < 1:
        args.error(f"--lam: sparsegen-lin needs λ < 1; got {config.lam}")
    if config.hidden_size % config.heads:
        args.error(f"--heads {config.heads} does not divide --hidden-size {config.hidden_size}")
    try:
        import transformers  # noqa: F401
    except ImportError:
        args.error("sparsegen hf needs transformers: pip install 'sparsegen[transformers]'")
    try:  # the data are read here, so that a bad --data-home stops it before training
        prepared = hf.prepare(config, data_home=args.data_home)
    except (OSError, ValueError) as error:
        args.error(str(error))
    hf.run_hf(
        args.out,
        quick=args.quick,
        seeds=tuple(range(args.seeds)),
        config=config,
        n_jobs=args.jobs,
        device=args.device,
        prepared=prepared,
    )
    print((args.out / "hf.md").read_text())


def _bench(commands: Commands) -> None:
    parser = commands.add_parser(
        "bench",
        help="time the kernels against torch.softmax and entmax (ratios, same run)",
        description="Median forward and forward+backward times of sparsemax, sparsegen-lin and "
        "sparsehourglass against torch.softmax (and entmax's sparsemax when installed) on "
        "float32 (B, K) shapes, with 1 thread and all threads, printed as ratios measured in "
        "the same run; the full run adds thread scaling, peak memory and start-up times. "
        "Writes bench.md to --out.",
    )
    _add_output(parser)
    parser.add_argument(
        "--quick", action="store_true", help="3 shapes, 5 repeats (about half a minute)"
    )
    parser.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> None:
    from sparsegen.benchmark import run_benchmark

    text = run_benchmark(quick=args.quick, keep_freed=True)  # a process of its own
    (args.out / "bench.md").write_text(text)
    print(text)


def _reproduce(commands: Commands) -> None:
    parser = commands.add_parser(
        "reproduce",
        help="run everything above and write one report (report.md) with every table and figure",
        description="Run demo, plot, properties, multilabel (Table 2 on the shipped MULAN sets, "
        "the synthetic experiments), attention, quick runs of translate and nli, and a quick "
        "bench, writing their files and a single markdown report, report.md, that embeds the "
        "tables and figures. Needs no download; about 9 minutes on 2 cores.",
    )
    _add_output(parser)
    _add_table2_data(parser)
    _add_jobs(parser)
    parser.add_argument(
        "--full-bench", action="store_true", help="the full speed benchmark (adds minutes)"
    )
    parser.set_defaults(run=_run_reproduce)


def _run_reproduce(args: argparse.Namespace) -> None:
    from sparsegen.experiments import nli, translation
    from sparsegen.report import reproduce

    try:  # the text sets of the quick runs, read now: a bad copy stops it before any section
        translation.multi30k()
        nli.check_sets()
    except (OSError, ValueError) as error:
        args.error(str(error))
    with _fetched(args):
        path = reproduce(
            args.out,
            datasets=tuple(args.datasets),
            data_home=args.data_home,
            n_jobs=args.jobs,
            full_benchmark=args.full_bench,
            shuffled_folds=args.shuffled_folds,
        )
    print(f"wrote {path}")


@contextlib.contextmanager
def _fetched(args: argparse.Namespace) -> Iterator[None]:
    """A dataset fetched on first use that cannot be (no network) stops the command with
    one line, as a missing file does."""
    from sparsegen.datasets.multilabel import DatasetUnavailable

    try:
        yield
    except DatasetUnavailable as error:
        args.error(str(error))


# `sparsegen --help` lists the commands in this order; each adds its parser, which names
# (set_defaults(run=...)) the function that runs it.
COMMANDS: tuple[Callable[[Commands], None], ...] = (
    _demo,
    _plot,
    _properties,
    _multilabel,
    _attention,
    _translate,
    _nli,
    _hf,
    _bench,
    _reproduce,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``sparsegen`` parser: a command per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="sparsegen",
        description="Sparse probability mappings: sparsemax and the sparsegen family.",
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Command
    )
    for add in COMMANDS:
        add(commands)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as the command line shows it: the message, not the library's source line."""
    return f"sparsegen: {category.__name__}: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """The ``sparsegen`` command; returns its exit status."""
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        with needs_extra("experiments", "this command"):
            return _run(argv)
    except MissingExtra as error:  # the core installed alone: say what to install, no traceback
        print(f"sparsegen: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's status for it, no traceback
        print(
            "sparsegen: interrupted (finished runs and checkpoints are kept: the same command "
            "resumes)",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:
        # the reader left (``sparsegen demo | head``): stop quietly, as Unix tools do, and
        # keep Python from reporting the flush of the closed pipe at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        warnings.formatwarning = formatwarning


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    out = getattr(args, "out", None)
    made = _missing_folders(out) if out is not None else []
    try:
        if out is not None:
            _writable(args)
        if hasattr(args, "datasets"):
            args.datasets = args.datasets or list(TABLE2_DATASETS)
            args.datasets = _datasets(args)
        args.run(args)
    except BaseException:
        # a refused or failed command leaves no empty --out behind, where it made one
        for folder in made:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    return 0


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    return [folder for folder in (path, *path.parents) if not folder.exists()]


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
