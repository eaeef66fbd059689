"""The command line's user errors: one line naming the problem, exit status 2, before any work."""

import contextlib
import gzip
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import pytest
from fresh_interpreter import run_command


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plot", "--out", ""], "expected a folder; got an empty path"),
        (["attention", "--seeds", "0"], "must be at least 1; got 0"),
        (["multilabel", "--jobs", "0"], "must be at least 1; got 0"),
        (["attention", "--jobs", "two"], "expected a whole number; got 'two'"),
        (["plot", "--out", "/proc/forbidden"], "--out /proc/forbidden: cannot write there"),
        (
            ["multilabel", "--out", "o", "--datasets", "nosuchset"],
            "unknown dataset 'nosuchset': not shipped",
        ),
        (["translate", "--out", "o", "--lam-grid", "1.5"], "sparsegen-lin needs λ < 1"),
        (["translate", "--out", "o", "--lam-grid", "0.5", "0.5"], "--lam-grid: each λ once"),
        (["translate", "--out", "o", "--direction", "fr-en", "fr-en"], "each direction once"),
        (["translate", "--out", "o", "--beam", "100000"], "at most --vocab-size (4000)"),
        (["attention", "--jobs", "100000"], "at most the"),
        (["translate", "--out", "o", "--only", "sparsemax q=1"], "--only: no setting"),
        (["translate", "--out", "o", "--epochs", "0"], "must be at least 1; got 0"),
        (["translate", "--out", "o", "--metric", "meteor"], "invalid choice: 'meteor'"),
        (["nli", "--out", "o", "--glove", "nosuch.txt"], "nosuch.txt: no such file"),
        (["nli", "--out", "o", "--dropout", "1.5"], "--dropout: must be in [0, 1); got 1.5"),
        (["nli", "--out", "o", "--lr", "-1"], "--lr: must be a positive finite number"),
        (["translate", "--out", "o", "--hidden-dim", "3"], "--hidden-dim: must be even"),
        (["nli", "--out", "o", "--data-home", "/nonexistent"], "not found under /nonexistent"),
        (["nli", "--out", "o", "--glove", "/"], "/ is a folder; give a file"),
        (
            ["multilabel", "--out", "o", "--data-home", "/dev/null"],
            "/dev/null is a file; give a folder",
        ),
        (
            ["multilabel", "--out", "o", "--data-home", "/nonexistent", "--skip-synthetic"],
            "--datasets scene: scene.xml (or scene.xml.gz) not found under /nonexistent",
        ),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, message, tmp_path):
    # As in a fresh interpreter, as a user runs it: exit status 2, the problem named, no
    # traceback, nothing written into the current directory, not even an empty --out.
    result = run_command(argv, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()[-1]) > 20  # the last line says what is wrong
    assert not any(tmp_path.iterdir())


def test_an_existing_file_is_no_output_folder(tmp_path):
    existing = tmp_path / "table.md"
    existing.write_text("keep me")
    result = run_command(["properties", "--out", str(existing)])
    assert result.returncode == 2 and "is a file; give a folder" in result.stderr
    assert existing.read_text() == "keep me"


def test_a_closed_pipe_ends_the_output_quietly():
    """`sparsegen demo | head -1`: no BrokenPipeError traceback when the reader leaves."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sparsegen", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    assert process.stdout.read(10)
    process.stdout.close()
    _, stderr = process.communicate(timeout=120)
    assert b"BrokenPipeError" not in stderr and b"Traceback" not in stderr, stderr


INTERRUPTED = r"""
import pathlib, sys, time
from sparsegen.experiments.runner import run_parallel
def job(i, folder):
    pathlib.Path(folder, str(i)).touch()
    time.sleep(120)
run_parallel(job, [(i, sys.argv[1]) for i in range(4)], n_jobs=2, description="runs")
"""


def test_ctrl_c_stops_a_parallel_run_and_its_workers_at_once(tmp_path):
    # The terminal sends Ctrl-C to the whole process group, twice if pressed twice. joblib
    # kills its workers through psutil; without it, through pgrep processes that the
    # second Ctrl-C could kill, and its fallback failed: the command hung for good.
    from joblib.externals.loky.backend import utils

    assert utils.psutil is not None  # (an extra's dependency)
    process = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED, str(tmp_path)],
        start_new_session=True,  # its own group, as a command started from a shell
        stderr=subprocess.PIPE,
    )
    try:
        started = time.monotonic()
        while len(list(tmp_path.iterdir())) < 2:  # both workers in a job
            assert time.monotonic() - started < 120 and process.poll() is None
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        time.sleep(0.01)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=30)  # (the jobs would sleep for 120 s)
        deadline = time.monotonic() + 10
        while _running_in_group(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running_in_group(process.pid)  # the workers are gone (zombies at most)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _running_in_group(group: int) -> list[str]:
    """The states of the processes of ``group`` that are not zombies (whose parent, gone,
    left them to an init that may not reap them)."""
    listing = subprocess.run(
        ["ps", "-o", "stat=", "-g", str(group)], capture_output=True, text=True
    ).stdout
    return [state for state in listing.split() if not state.startswith("Z")]


def test_ctrl_c_is_one_line_and_the_shells_status(monkeypatch, capsys):
    from sparsegen import cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run", interrupted)
    assert cli.main(["demo"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("sparsegen: interrupted") and err.count("\n") == 1, err


def test_any_dataset_in_mulan_layout_runs_by_name_in_any_case(tmp_path, monkeypatch):
    from sparsegen import datasets
    from sparsegen.cli import main
    from sparsegen.experiments import multilabel

    shipped = datasets.multilabel.data_folder(None, datasets.DATA_ENV, "multilabel") / "emotions"
    folder = tmp_path / "yeast"
    folder.mkdir()
    for part in ("train", "test"):
        data = (shipped / f"emotions-{part}.arff.gz").read_bytes()
        (folder / f"yeast-{part}.arff.gz").write_bytes(data)
    (folder / "yeast.xml").write_bytes((shipped / "emotions.xml").read_bytes())
    mine = datasets.load_mulan("Yeast", "test", data_home=tmp_path)
    np = pytest.importorskip("numpy")
    assert np.array_equal(mine.Y, datasets.load_mulan("EMOTIONS", "test").Y)
    seen = {}

    def run_table2(out, names, **kwargs):
        seen["d"] = names
        (out / "table2.md").write_text("# Table 2")

    monkeypatch.setattr(multilabel, "run_table2", run_table2)
    main(["multilabel", "--out", str(tmp_path / "o"), "--data-home", str(tmp_path),
          "--datasets", "YEAST", "--skip-synthetic"])  # fmt: skip
    assert seen["d"] == ("yeast",)
    main(["multilabel", "--out", str(tmp_path / "o"), "--data-home", str(tmp_path),
          "--datasets", "yeast", "YEAST", "--skip-synthetic"])  # fmt: skip
    assert seen["d"] == ("yeast",)  # a name given twice runs once
    meka = tmp_path / "single"
    meka.mkdir()
    (meka / "single.arff").write_text(
        "@relation 'single: -C 2'\n@attribute a {0,1}\n@attribute b {0,1}\n"
        "@attribute x numeric\n@data\n1,0,0.5\n0,1,1.5\n"
    )
    assert datasets.load_mulan("single", "all", data_home=tmp_path).Y.tolist() == [[1, 0], [0, 1]]


def _meka(folder: Path, name: str, rows: list[str], features: str = "x numeric") -> None:
    (folder / name).mkdir()
    attributes = "".join(f"@attribute {f}\n" for f in features.split(","))
    (folder / name / f"{name}.arff").write_text(
        f"@relation '{name}: -C 2'\n@attribute a {{0,1}}\n@attribute b {{0,1}}\n"
        f"{attributes}@data\n" + "".join(f"{row}\n" for row in rows)
    )


def test_a_list_flag_given_twice_adds_to_the_first():
    # (argparse's nargs="+" kept the last list alone: --datasets scene --datasets birds ran
    # birds only, and an unknown name in the first list went unnoticed)
    from sparsegen.cli import TABLE2_DATASETS, build_parser

    parse = build_parser().parse_args
    args = parse(["multilabel", "--datasets", "a", "--datasets", "b", "c", "--out", "o"])
    assert args.datasets == ["a", "b", "c"]
    assert parse(["multilabel", "--out", "o"]).datasets is None  # (_run: TABLE2_DATASETS)
    assert TABLE2_DATASETS == ("scene", "emotions", "birds", "cal500")
    args = parse(["translate", "--only", "a", "--only", "b", "--lam-grid", "0.5", "--lam-grid",
                  "0.25", "--direction", "fr-en", "--direction", "en-fr"])  # fmt: skip
    assert (args.only, args.lam_grid, args.direction) == (
        ["a", "b"],
        [0.5, 0.25],
        ["fr-en", "en-fr"],
    )


def test_negative_numbers_in_scientific_notation_are_values_not_flags():
    # (argparse's own pattern read -1e3 as an unknown flag: "expected at least one argument")
    from sparsegen.cli import build_parser

    parse = build_parser().parse_args
    args = parse(["translate", "--out", "o", "--lam-grid", "-1e3", "-.5", "-2E+1", "0.25"])
    assert args.lam_grid == [-1000.0, -0.5, -20.0, 0.25]
    with pytest.raises(SystemExit):  # a value, then refused by the flag's own type
        parse(["translate", "--out", "o", "--lam-grid", "-inf"])


def test_datasets_the_protocol_cannot_run_stop_before_it_starts(tmp_path, capsys):
    # too few rows for the 5-fold jackknife, a NaN feature, train and test files whose
    # features differ in order: one line each, before any experiment
    _meka(tmp_path, "few", ["1,0,0.5", "0,1,1.5", "1,1,2.5"])
    _meka(tmp_path, "nan", [f"{i % 2},{1 - i % 2},{'nan' if i == 3 else i}" for i in range(12)])
    layout = tmp_path / "swapped"
    layout.mkdir()
    for part, order in (("train", "x numeric,y numeric"), ("test", "y numeric,x numeric")):
        _meka(layout, part, [f"{i % 2},1,{i},{-i}" for i in range(9)], order)
        (layout / part / f"{part}.arff").rename(layout / f"swapped-{part}.arff")
    (layout / "swapped.xml").write_text(
        '<labels xmlns="http://mulan.sourceforge.net/labels">'
        '<label name="a"></label><label name="b"></label></labels>'
    )
    for name, message in (
        ("few", "2 labelled training and 1 test rows; the 5-fold jackknife needs 5"),
        ("nan", "feature 'x' is nan, not a number"),
        ("swapped", "declare different features (2 and 2; the first difference at column 0)"),
    ):
        argv = ["multilabel", "--data-home", str(tmp_path), "--datasets", name,
                "--skip-synthetic", "--out", str(tmp_path / "o")]  # fmt: skip
        assert message in _stopped(argv, capsys), name


def test_a_dataset_that_cannot_be_fetched_is_one_line(tmp_path, capsys, monkeypatch):
    sklearn = pytest.importorskip("sklearn.datasets")

    def offline(**kwargs):
        raise OSError("no network")

    monkeypatch.setattr(sklearn, "fetch_rcv1", offline)
    argv = ["multilabel", "--datasets", "rcv1", "--skip-synthetic", "--jobs", "1",
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert "RCV1-v2 could not be fetched (no network)" in _stopped(argv, capsys)


def test_report_only_without_finished_runs_for_its_flags_is_one_line(tmp_path, capsys):
    # a report already there is another run's (e.g. --quick): not printed as this one's
    (tmp_path / "translation.md").write_text("# an earlier --quick run's report")
    argv = ["translate", "--report-only", "--jobs", "1", "--out", str(tmp_path)]
    assert "no finished runs" in _stopped(argv, capsys)


def test_warnings_print_as_one_line_without_source():
    # A library warning met by the command (e.g. sentences truncated) reads as one line,
    # in a fresh interpreter (pytest captures warnings itself).
    code = """
import warnings, sparsegen.cli as cli
def demo():
    warnings.warn("3 of 9 test sentences were truncated", UserWarning, stacklevel=1)
    return "done"
cli.demo = demo
assert cli.main(["demo"]) == 0
assert warnings.formatwarning is not cli._one_line_warning  # restored
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "sparsegen: UserWarning: 3 of 9 test sentences were truncated\n"


def _stopped(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """The last line on stderr of an in-process run that must end with exit status 2."""
    from sparsegen.cli import main

    with pytest.raises(SystemExit) as stop:
        main(argv)
    stderr = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1]


def _bad_inputs(folder: Path) -> dict[str, Path]:
    """Tiny files, each bad in one way, and a good training file for the others."""
    gz = gzip.compress(b"un chat\n" * 50)
    files = {
        "corrupt.fr.gz": gz[:10] + b"\xff" * 10 + gz[20:],
        "a.fr": b"un chat\n",
        "a.en": b"a cat\n",
        "label.csv": b"pairID,sentence1,sentence2,label\np1,a cat,an animal,maybe\n",
        "cr.csv": b"pairID,sentence1,sentence2,label\np1,a\rcat,an animal,neutral\n",
        "good.csv": b"pairID,sentence1,sentence2,label\n"
        + b"".join(b"p%d,a cat sat,an animal sat,neutral\n" % i for i in range(20)),
        "glove.txt": b"a x y\n",
        "hostname.txt": b"myhost\n",
        "no-known-word.txt": b"zzzqqq" + b" 0.5" * 100 + b"\n",
        "glove-3d.txt.gz": gzip.compress(b"a 0.5 0.5 0.5\n"),
        "blank.txt": b"\n  \n",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    multi30k = folder / "m30k" / "multi30k-fr-en"  # a --data-home whose Multi30k is corrupt
    multi30k.mkdir(parents=True)
    for split in ("train", "val", "test_2016_flickr", "test_2017_flickr"):
        for language in ("fr", "en"):
            (multi30k / f"{split}.{language}.gz").write_bytes(files["corrupt.fr.gz"])
    nli_home = folder / "nli"  # whole NLI sets, but not the shipped SNLI dev (no figure pairs)
    for name in ("snli/snli_1.0_dev", "snli/snli_1.0_test", "multinli/multinli_1.0_dev_matched",
                 "multinli/multinli_1.0_dev_mismatched"):  # fmt: skip
        (nli_home / name).parent.mkdir(parents=True, exist_ok=True)
        (nli_home / f"{name}.csv").write_bytes(files["good.csv"])
    folders = {"m30k": folder / "m30k", "nli-home": nli_home}
    return {**{name: folder / name for name in files}, **folders}


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["translate", "--train", "corrupt.fr.gz", "a.en", "--valid", "a.fr", "a.en",
             "--test", "a.fr", "a.en"],
            "corrupt.fr.gz, line 1: not a readable gzip file",
        ),
        (["translate", "--quick", "--data-home", "m30k"],
         "train.fr.gz, line 1: not a readable gzip file"),
        (["nli", "--quick", "--train", "label.csv"], "label.csv, line 2: unknown label 'maybe'"),
        (["nli", "--quick", "--data-home", "nli-home"],
         "SNLI's dev set lacks the pairs the report's figure shows"),
        (["nli", "--quick", "--train", "cr.csv"], "cr.csv, line 2: a carriage return (\\r)"),
        (["nli", "--quick", "--train", "good.csv", "--glove", "glove.txt"],
         "glove.txt: not GloVe text, 'word v1 … v100' per line"),
        (["nli", "--quick", "--train", "good.csv", "--glove", "hostname.txt"],
         "hostname.txt, line 1: 0 values, expected 100"),
        (["nli", "--quick", "--train", "good.csv", "--glove", "no-known-word.txt"],
         "no-known-word.txt: none of the"),
        (["nli", "--quick", "--train", "good.csv", "--glove", "glove-3d.txt.gz"],
         "glove-3d.txt.gz: vectors of 3 values, not 100; pass --embed-dim 3"),
        (["translate", "--quick", "--train", "a.fr", "a.en", "--valid", "a.fr", "a.en",
          "--test", "blank.txt", "blank.txt"], "no sentence pair (2 with a blank side dropped)"),
        (["translate", "--quick", "--device", "nosuch"], "unknown device 'nosuch'"),
        (["translate", "--train", "a.fr", "a.en", "--valid", "a.fr", "a.en", "--test", "a.fr",
          "a.en", "--direction", "en-fr"], "--direction is Multi30k's; --train, --valid"),
        (["nli", "--device", "cuda:99"], "cuda:99: no such cuda device here"),
        (["nli", "--device", "meta"], "meta: no such meta device here"),
    ],
)  # fmt: skip
@pytest.mark.filterwarnings("ignore:.*truncated")
def test_bad_data_or_devices_stop_before_training_with_one_line(argv, message, tmp_path, capsys):
    files = _bad_inputs(tmp_path)
    out = tmp_path / "out"
    argv = [str(files.get(arg, arg)) for arg in argv]
    assert message in _stopped([*argv, "--out", str(out)], capsys)
    assert not out.exists()  # nothing trained, nor an empty folder left


def test_reproduce_reads_its_text_sets_before_its_first_section(tmp_path, capsys, monkeypatch):
    # (it had run five minutes of sections before the translation run's FileNotFoundError)
    (tmp_path / "text").mkdir()
    monkeypatch.setenv("SPARSEGEN_TEXT_DATA", str(tmp_path / "text"))
    message = _stopped(["reproduce", "--out", str(tmp_path / "out")], capsys)
    assert "train.fr (or train.fr.gz) not found" in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


COMMAND_NAMES = [
    "demo", "plot", "properties", "multilabel", "attention", "translate", "nli", "hf",
    "bench", "reproduce",
]  # fmt: skip


def _commands() -> dict:
    """Each command's parser, with all its flags declared."""
    import argparse

    from sparsegen.cli import build_parser

    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: parser.declared() for name, parser in action.choices.items()}


def test_every_command_names_the_function_that_runs_it():
    commands = _commands()
    assert list(commands) == COMMAND_NAMES  # `sparsegen --help`'s order
    runs = [parser.get_default("run") for parser in commands.values()]
    assert all(callable(run) for run in runs) and len(set(runs)) == len(runs)


def _config_cases():
    from sparsegen.experiments import nli, translation

    commands = _commands()
    return [
        (commands["translate"], translation.TranslationConfig, ()),
        (translation.build_parser(), translation.TranslationConfig, translation._TEST_TIME),
        (commands["nli"], nli.NLIConfig, ()),
    ]


def test_each_config_field_is_one_flag_with_the_fields_default():
    from sparsegen.experiments.flags import config_from_args

    for parser, config_class, skip in _config_cases():
        flags = [flag for action in parser._actions for flag in action.option_strings]
        helps = {flag: action.help for action in parser._actions for flag in action.option_strings}
        for field in fields(config_class):
            flag = "--" + field.name.replace("_", "-")
            assert flags.count(flag) == (field.name not in skip), (parser.prog, flag)
            if field.name not in skip and field.default is not None:
                assert f"(default {field.default}" in helps[flag], (parser.prog, flag)
        # a flag left out leaves the field's default
        args = parser.parse_args(["--out", "o"] if "--out" in flags else [])
        assert config_from_args(config_class, args) == config_class()


def test_a_flag_given_wins_over_the_quick_preset_and_one_left_out_does_not(tmp_path, monkeypatch):
    from sparsegen.cli import main
    from sparsegen.experiments import flags, nli, translation

    seen = {}

    def run_translation(out, config, **kwargs):
        seen["translate"] = config
        (out / "translation.md").write_text("report")

    def run_nli(out, config, **kwargs):
        seen["nli"] = config
        (out / "nli.md").write_text("report")

    monkeypatch.setattr(translation, "run_translation", run_translation)
    monkeypatch.setattr(nli, "prepare", lambda config, **kwargs: None)
    monkeypatch.setattr(nli, "run_nli", run_nli)
    out = ["--out", str(tmp_path)]
    main(["translate", *out, "--quick", "--epochs", "5", "--hidden-dim", "64"])
    quick = translation.QUICK
    assert seen["translate"] == replace(quick, epochs=5, hidden_dim=64)
    main(["nli", *out, "--quick", "--dropout", "0", "--vocab-size", "8000"])
    assert seen["nli"] == replace(nli.QUICK, dropout=0.0, vocab_size=8000)  # 0 and the default
    main(["translate", *out, "--epochs", "5"])
    assert seen["translate"] == replace(translation.TranslationConfig(), epochs=5)
    args = translation.build_parser().parse_args(["--quick", "--embed-dim", "16"])
    config = flags.config_from_args(translation.TranslationConfig, args, quick)
    assert config == replace(quick, embed_dim=16)


def test_building_the_parser_imports_no_experiment():
    # The experiments need the experiments extra; `sparsegen demo` and `--help` must not
    # (the flags' readers, plain argparse, are shared with the experiments' own commands).
    code = """
import sys, sparsegen.cli as cli
cli.build_parser().parse_args(["demo"])
extras = ("sklearn", "scipy", "matplotlib", "sentencepiece", "sacrebleu", "arff")
print(sorted(m for m in sys.modules if m.startswith("sparsegen.experiments")
             or m.split(".")[0] in extras))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['sparsegen.experiments', 'sparsegen.experiments.flags']"


def test_hf_takes_no_warm_up_but_not_a_negative_one(tmp_path, capsys):
    from sparsegen.cli import build_parser

    args = build_parser().parse_args(["hf", "--warmup", "0", "--out", str(tmp_path)])
    assert args.warmup == 0
    assert "--warmup: must be at least 0; got -1" in _stopped(
        ["hf", "--warmup", "-1", "--out", str(tmp_path)], capsys
    )


@pytest.mark.parametrize(
    "experiment, argv, message",
    [
        ("attention", ["--mapping", "nosuch"], "unknown mapping 'nosuch'"),
        ("attention", ["--mapping", "sparsegen_lin", "--lam", "1.5"], "lam must be < 1"),
        ("attention", ["--batch-size", "0"], "--batch-size: must be at least 1; got 0"),
        ("attention", ["--steps", "-5"], "--steps: must be at least 1; got -5"),
        ("attention", ["--save", "/nonexistent/x.pt"], "its folder does not exist"),
        ("translation", ["--mapping", "nosuch"], "unknown mapping 'nosuch'"),
        ("translation", ["--temperature", "0"], "temperature must be positive"),
        ("translation", ["--lr", "nan"], "--lr: expected a finite number; got nan"),
        ("translation", ["--save", "/nonexistent/x.pt"], "its folder does not exist"),
        ("translation", ["--hidden-dim", "3"], "--hidden-dim: must be even"),
        ("translation", ["--valid", "a.fr", "a.en"], "give --train too"),
        ("translation", ["--train", "/nonexistent.fr", "/nonexistent.en"], "No such file"),
    ],
)
def test_the_torchrun_entry_points_refuse_bad_flags_before_training(
    experiment, argv, message, capsys, monkeypatch
):
    # (tracebacks after a model was built, a run of -5 steps, a --save that failed after
    # the training)
    import importlib

    module = importlib.import_module(f"sparsegen.experiments.{experiment}")
    monkeypatch.setattr(module, "distributed", lambda: pytest.fail("it went on to train"))
    with pytest.raises(SystemExit) as exit_:
        module.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_nan_and_infinite_config_floats_are_refused(capsys):
    from sparsegen.cli import main

    for argv in (["translate", "--length-penalty", "nan"], ["hf", "--lam=-inf"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "expected a finite number" in capsys.readouterr().err
