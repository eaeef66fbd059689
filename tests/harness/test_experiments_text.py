"""The translation and NLI experiments: runners, selection, resume, user corpora, torchrun, CLI."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsegen.cli import main
from sparsegen.datasets import load_multi30k
from sparsegen.experiments import nli, translation
from sparsegen.experiments.settings import Setting
from sparsegen.experiments.tables import support_trend
from sparsegen.text import SubwordTokenizer

# one worker runs this module, so that its fixture runs once, not once on each
pytestmark = pytest.mark.xdist_group("experiments_text")

TINY_NLI = replace(nli.QUICK, train_limit=300, epochs=1, vocab_size=500, hidden_dim=16,
                   embed_dim=16)  # fmt: skip
TINY_MT = replace(translation.QUICK, train_limit=300, valid_limit=20, test_limit=20, epochs=1,
                  vocab_size=500, embed_dim=16, hidden_dim=16, beam=2, max_tokens=100)  # fmt: skip


def _slice(folder: Path, n: int = 60) -> dict[str, list[str]]:
    """Tiny parallel files cut from Multi30k: train/valid/test, FR source and EN target."""
    data = load_multi30k("val")
    files = {}
    for part, (lo, hi) in {"train": (0, n), "valid": (n, n + 10), "test": (n + 10, n + 20)}.items():
        src, tgt = folder / f"{part}.fr", folder / f"{part}.en"
        src.write_text("\n".join(data.source[lo:hi]) + "\n")
        tgt.write_text("\n".join(data.target[lo:hi]) + "\n")
        files[part] = [str(src), str(tgt)]
    return files


def test_selection_takes_the_best_validation_mean_per_family():
    grid = (Setting("softmax", "softmax"), *(Setting("sparsegen-lin", "sparsegen_lin", lam=v)
                                            for v in (0.25, 0.5)))  # fmt: skip
    rows = []
    for setting, valid, test in zip(grid, (50, 60, 58), (70, 65, 71), strict=True):
        for seed, noise in enumerate((-1, 1)):
            rows.append({"setting": setting.name, "seed": seed, "valid_accuracy": valid + noise,
                         "test_accuracy": test + noise, "support": 3.0, "support_share": 0.5,
                         "learnt_lam": None, "seconds": 1.0})  # fmt: skip
    per_setting, chosen = nli.summarise(rows, grid)
    assert [row["setting"] for row in chosen] == ["softmax", "sparsegen-lin λ=0.25"]
    assert chosen[1]["test_accuracy"] == 65  # the test score never picks
    assert per_setting[0]["test_sd"] == pytest.approx(2**0.5)


def test_translation_reports_each_seed_and_the_spread():
    grid = (Setting("softmax", "softmax"), Setting("sparsemax", "sparsemax"))
    runs = [("softmax", 1, 40.0, 45.0), ("softmax", 0, 42.0, 47.0), ("sparsemax", 0, 30.0, 33.0)]
    rows = [{"setting": name, "seed": seed, "valid": valid, "test:t16": test, "support": 2.0,
             "support_share": 0.2, "seconds": 60.0, "learnt_lam": None}
            for name, seed, valid, test in runs]  # fmt: skip
    per_setting, chosen = translation.summarise(rows, grid)
    soft, sparse = per_setting
    assert (soft["seeds"], soft["test:t16"], soft["valid"]) == (2, 46.0, 41.0)
    assert soft["sd:test:t16"] == pytest.approx(2**0.5) and soft["each:test:t16"] == [47.0, 45.0]
    assert (sparse["seeds"], sparse["sd:test:t16"]) == (1, 0.0)
    lines = translation.findings(per_setting, chosen)
    assert "- softmax, t16 per seed: 47.00, 45.00." in lines  # in seed order
    assert not any("sparsemax, t16 per seed" in line for line in lines)
    assert any(line.startswith("- sparsemax") and "-13.00 vs softmax on" in line for line in lines)
    assert not any("vs softmax (temperature)" in line for line in lines)


def test_sparse_mappings_are_also_compared_with_a_better_softmax_temperature():
    grid = (Setting("softmax", "softmax"), Setting("softmax (temperature)", "softmax",
            temperature=16.0), Setting("sparsemax", "sparsemax"))  # fmt: skip
    runs = [("softmax", 40.0, 45.0), ("softmax (temperature) T=16", 44.0, 50.0),
            ("sparsemax", 30.0, 33.0)]  # fmt: skip
    rows = [{"setting": name, "seed": 0, "valid": valid, "test:t16": test, "support": 2.0,
             "support_share": 1.0, "seconds": 60.0, "learnt_lam": None}
            for name, valid, test in runs]  # fmt: skip
    lines = translation.findings(*translation.summarise(rows, grid))
    gaps = [line for line in lines if line.startswith("- sparsemax")]
    assert len(gaps) == 2
    assert (
        "-12.00 vs softmax on t16" in gaps[0] and "-17.00 vs softmax (temperature) T=16" in gaps[1]
    )
    rows[1]["valid"] = 39.0  # worse than softmax on validation: no second comparison
    lines = translation.findings(*translation.summarise(rows, grid))
    assert len([line for line in lines if line.startswith("- sparsemax")]) == 1


@pytest.mark.parametrize("mapping, lam", [("softmax", None), ("sparsegen_lin", 0.99)])
def test_attention_statistics_agree_with_one_sentence_at_a_time(mapping, lam):
    from sparsegen.models import Seq2Seq
    from sparsegen.text import pad_sequences

    torch.manual_seed(0)
    model = Seq2Seq(30, 20, embed_dim=8, hidden_dim=8, attention=mapping, lam=lam).eval()
    rng = np.random.default_rng(0)
    sources = [rng.integers(4, 30, rng.integers(2, 9)).tolist() for _ in range(70)]
    outputs = [rng.integers(4, 20, rng.integers(0, 7)).tolist() for _ in range(70)]
    data = translation.Encoded(sources, outputs, [""] * 70, [""] * 70)
    got = translation.attention_support(model, data, outputs, "cpu")
    per_token = []
    for src, out in zip(sources, outputs, strict=True):
        s, s_len = pad_sequences([src])
        t, _ = pad_sequences([out], bos=True)
        with torch.no_grad():
            w = model(s, s_len, t)[1][0].numpy()  # (len(out) + 1, len(src)): BOS starts
        for row in w:
            k = int((row > 0).sum())
            per_token.append((k, k / len(src), k == 1, row.argmax() == len(src) - 1))
    want = np.mean(per_token, axis=0)
    names = ("support", "support_share", "one_piece", "on_last")
    np.testing.assert_allclose([got[n] for n in names], want, rtol=1e-9)
    assert (got["one_piece"] == 0) == (mapping == "softmax")
    assert 0 < got["on_last"] < 1


def test_the_support_trend_is_read_in_increasing_lambda():
    # sparsemax counts as λ = 0 and comes first in the grid; a λ < 0 sorts before it.
    supports = {"": 1.07, "λ=-1": 1.10, "λ=0.25": 1.01, "λ=0.75": 1.00}
    rows = [{"parameter": p, "support": s} for p, s in supports.items()]
    lam = lambda row: float(row["parameter"].partition("=")[2] or 0)  # noqa: E731
    assert support_trend(rows, lam) == (
        "λ=-1: 1.10, λ=0: 1.07, λ=0.25: 1.01, λ=0.75: 1.00 (falls monotonically)"
    )
    rows[1]["support"] = 1.0
    assert support_trend(rows, lam).endswith("(not monotone)")


def test_translate_only_trains_the_settings_it_names(monkeypatch, tmp_path, capsys):
    seen = {}

    def run(out, **kwargs):
        seen.update(kwargs)
        (out / "translation.md").write_text("report")

    monkeypatch.setattr(translation, "run_translation", run)
    names = ["sparsehourglass q=1", "sparsegen-lin (learnt)"]
    main(["translate", "--out", str(tmp_path), "--full-grid", "--only", *names])
    assert [s.name for s in seen["grid"]] == sorted(names)  # in the grid's order
    assert capsys.readouterr().out.strip() == "report"


@pytest.fixture(scope="module")
def nli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nli")
    grid = (Setting("NoAttention", None), Setting("sparsemax", "sparsemax"))
    rows = nli.run_nli(out, quick=True, seeds=(0,), grid=grid, config=TINY_NLI, n_jobs=1)
    return out, rows


def test_the_nli_runner_writes_its_report_figures_and_tables(nli_run):
    out, rows = nli_run
    text = (out / "nli.md").read_text()
    assert "quick run" in text and "reduced-scale reproduction" in text
    assert "| NoAttention | — |" in text and "| sparsemax | — |" in text and "82.52" in text
    for name in ("nli.csv", "nli_grid.csv", "nli_runs.csv"):
        assert (out / name).read_text().count("\n") >= 3
    for name in ("nli_attention.png", "nli_curves.png"):
        assert (out / name).stat().st_size > 10_000
    sparse = next(r for r in rows if r["setting"] == "sparsemax")
    weights = torch.tensor(sparse["example_weights"][0])
    assert len(sparse["example_weights"]) == 4  # the slides' four pairs
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))
    assert 0 < sparse["support"] and 0 < sparse["support_share"] <= 1
    assert next(r for r in rows if r["setting"] == "NoAttention")["example_weights"] is None


def test_the_slides_examples_never_train(nli_run):
    prepared = nli.prepare(TINY_NLI)
    held = set(prepared.examples.premise_text)
    assert len(held) == 4 and not held & set(prepared.train.premise_text)
    assert held <= set(prepared.valid.premise_text)


def test_finished_nli_runs_are_read_back_not_retrained(nli_run, monkeypatch):
    out, rows = nli_run

    def fail(*args, **kwargs):
        raise AssertionError("retrained")

    monkeypatch.setattr(nli, "train_one", fail)
    grid = (Setting("NoAttention", None), Setting("sparsemax", "sparsemax"))
    again = nli.run_nli(out, quick=True, seeds=(0,), grid=grid, config=TINY_NLI, n_jobs=1)
    assert [r["test_accuracy"] for r in again] == [r["test_accuracy"] for r in rows]


def test_a_changed_configuration_retrains_instead_of_reading_old_runs(nli_run, monkeypatch):
    # finished runs used to be keyed by setting and seed only: a rerun into the same folder
    # with other flags read the first run's numbers back under the new configuration
    out, _ = nli_run
    trained = []

    def record(setting, seed, prepared, config, device, **kwargs):
        trained.append(config.hidden_dim)
        raise RuntimeError("stop: it trains")

    monkeypatch.setattr(nli, "train_one", record)
    grid = (Setting("NoAttention", None),)
    changed = replace(TINY_NLI, hidden_dim=TINY_NLI.hidden_dim + 2)
    with pytest.raises(RuntimeError, match="stop"):
        nli.run_nli(out, quick=True, seeds=(0,), grid=grid, config=changed, n_jobs=1)
    assert trained == [changed.hidden_dim]


def test_nli_trains_on_a_user_file(tmp_path):
    path = tmp_path / "train.jsonl"
    dev = nli.load_nli("snli", "dev")
    path.write_text("\n".join(
        json.dumps({"gold_label": nli.NLI_LABELS[y], "sentence1": p, "sentence2": h})
        for p, h, y in zip(dev.premises[:200], dev.hypotheses[:200], dev.labels[:200],
                           strict=True)
    ))  # fmt: skip
    config = replace(TINY_NLI, train_limit=None)
    prepared = nli.prepare(config, train_path=path)
    assert len(prepared.train.labels) == 200 and len(prepared.valid.labels) == 9842
    assert "validated on SNLI dev" in prepared.description
    # the report describes this run, not the shipped reduced-scale one
    out = tmp_path / "out"
    grid = (Setting("NoAttention", None),)
    nli.run_nli(out, seeds=(0,), grid=grid, config=config, n_jobs=1, prepared=prepared)
    text = (out / "nli.md").read_text()
    assert "(run on a training file)" in text and "reduced-scale" not in text
    assert "trained on SNLI 1.0's 550k training pairs" in text and "from scratch" in text


def test_a_training_limit_draws_from_the_whole_pool():
    # the pool is SNLI dev, then MultiNLI's: its first pairs were all SNLI's, while the
    # validation slice that picks each run's epoch is two thirds MultiNLI's
    prepared = nli.prepare(TINY_NLI)
    snli = set(nli.load_nli("snli", "dev").premises)
    share = np.mean([premise in snli for premise in prepared.train.premise_text])
    assert len(prepared.train.labels) == TINY_NLI.train_limit and 0.2 < share < 0.5
    assert "300 of the training pairs, drawn at random" in prepared.description


def test_translation_on_user_files_with_bleu_and_rouge(tmp_path):
    files = _slice(tmp_path)
    corpus = translation.files_corpus(files["train"], files["valid"], files["test"])
    grid = (Setting("softmax", "softmax"), Setting("sparsemax", "sparsemax"))
    for metric in ("bleu", "rouge"):
        out = tmp_path / metric
        rows = translation.run_translation(out, grid=grid, corpus=corpus, n_jobs=1,
                                           config=replace(TINY_MT, metric=metric))  # fmt: skip
        text = (out / "translation.md").read_text()
        assert "copy the source" in text and ("nrefs:1" in text) == (metric == "bleu")
        assert ("ROUGE-L" in text) == (metric == "rouge")
        # the tokenizers' own sizes, which SentencePiece may make other than asked
        prepared = translation.prepare(replace(TINY_MT, metric=metric), corpus)
        sizes = [len(SubwordTokenizer.from_bytes(t))
                 for t in (prepared.source_tokenizer, prepared.target_tokenizer)]  # fmt: skip
        assert f"vocabularies of {sizes[0]:,} (source) and {sizes[1]:,} (target) pieces" in text
        for row in rows:
            weights = torch.tensor(row["example"]["weights"])
            assert weights.shape == (len(row["example"]["target"]), len(row["example"]["source"]))
            torch.testing.assert_close(weights.sum(-1), torch.ones(len(weights)))
        sparse = next(r for r in rows if r["setting"] == "sparsemax")
        soft = next(r for r in rows if r["setting"] == "softmax")
        assert soft["support_share"] == pytest.approx(1.0) and sparse["support"] <= soft["support"]
        # the same statistics on the validation set, one value per epoch
        assert soft["curve_support_share"] == pytest.approx([1.0] * soft["epochs"])
        assert soft["curve_one_piece"] == [0.0] * soft["epochs"]
        assert len(sparse["curve_one_piece"]) == sparse["epochs"]
        assert all(0 <= share <= 1 for share in sparse["curve_one_piece"] + sparse["curve_on_last"])
        assert (out / "translation_heatmaps.png").stat().st_size > 10_000
    more = (*grid, Setting("sparsegen-lin", "sparsegen_lin", lam=0.5))
    again = translation.run_translation(tmp_path / "bleu", grid=more, corpus=corpus,
                                        config=TINY_MT, finished_only=True)  # fmt: skip
    assert len(again) == 2  # nothing trained: the two finished runs, read back
    text = (tmp_path / "bleu" / "translation.md").read_text()
    assert "Not run in this direction: sparsegen-lin λ=0.5." in text
    assert not translation.run_translation(tmp_path / "empty", corpus=corpus, config=TINY_MT,
                                           finished_only=True)  # fmt: skip


def test_a_changed_test_or_validation_file_retrains(tmp_path, monkeypatch):
    # finished runs were keyed by the training files and the configuration only: a rerun
    # with another test (or validation) file of the same name read the old scores back
    files = _slice(tmp_path)
    corpus = translation.files_corpus(files["train"], files["valid"], files["test"])
    grid = (Setting("softmax", "softmax"),)
    out = tmp_path / "out"
    translation.run_translation(out, grid=grid, corpus=corpus, n_jobs=1, config=TINY_MT)
    trained = []

    def record(*args, **kwargs):
        trained.append(True)
        raise RuntimeError("stop: it trains")

    monkeypatch.setattr(translation, "train_one", record)
    again = translation.files_corpus(files["train"], files["valid"], files["test"])
    translation.run_translation(out, grid=grid, corpus=again, n_jobs=1, config=TINY_MT)
    assert not trained  # the same files: read back
    for part in ("test", "valid"):
        target = Path(files[part][1])
        saved = target.read_text()
        target.write_text(saved.upper())
        changed = translation.files_corpus(files["train"], files["valid"], files["test"])
        with pytest.raises(RuntimeError, match="stop"):
            translation.run_translation(out, grid=grid, corpus=changed, n_jobs=1, config=TINY_MT)
        target.write_text(saved)
    assert len(trained) == 2


def test_scores_agree_with_the_libraries_directly():
    import sacrebleu
    from rouge_score import rouge_scorer

    hyps, refs = ["a cat sat on the mat", "two dogs"], ["a cat sat on a mat", "two big dogs"]
    assert translation.score(hyps, refs, "bleu")["score"] == pytest.approx(
        sacrebleu.corpus_bleu(hyps, [refs]).score
    )
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pairs = zip(hyps, refs, strict=True)
    expected = 50 * sum(scorer.score(r, h)["rougeL"].fmeasure for h, r in pairs)
    assert translation.score(hyps, refs, "rouge")["score"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="'bleu' or 'rouge'"):
        translation.score(hyps, refs, "meteor")


def test_a_missing_rouge_score_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rouge_score", None)
    with pytest.raises(ImportError, match=r"pip install 'sparsegen\[rouge\]'"):
        translation.score(["a"], ["a"], "rouge")


def test_long_sentences_are_truncated_with_a_warning(tmp_path):
    files = _slice(tmp_path)
    corpus = translation.files_corpus(files["train"], files["valid"], files["test"])
    with pytest.warns(UserWarning, match="longer than 5 tokens and were truncated"):
        prepared = translation.prepare(replace(TINY_MT, max_tokens=5), corpus)
    assert max(map(len, prepared.train.source)) == 5


def test_torchrun_with_two_processes_trains_like_one(tmp_path, capsys):
    """DDP over 2 gloo processes, each on half of every batch, = 1 process on all of it;
    batches of 39 leave a last batch of one pair, where one process's share is empty (it
    crashed: "Cannot pack empty tensors"), and the epoch's loss is every share's (it was
    rank 0's)."""
    files = _slice(tmp_path, n=40)
    saved = tmp_path / "two.pt"
    args = ["--train", *files["train"], "--valid", *files["valid"], "--test", *files["test"],
            "--mapping", "sparsemax", "--quick", "--epochs", "2", "--dropout", "0",
            "--hidden-dim", "16", "--embed-dim", "16", "--batch-size", "39"]  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "sparsegen.experiments.translation", *args,
               "--save", str(saved)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'world_size': 2" in result.stdout
    one_path = tmp_path / "one.pt"
    assert translation.main([*args, "--save", str(one_path)]) == 0
    one, two = torch.load(one_path), torch.load(saved)
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, atol=2e-5, rtol=1e-4)

    def train_loss(printed):
        return float(re.search(r"'train_loss': ([\d.]+)", printed)[1])

    assert train_loss(result.stdout) == pytest.approx(train_loss(capsys.readouterr().out), 1e-4)


def test_cli_rejects_bad_corpora_before_any_work(tmp_path, capsys):
    files = _slice(tmp_path)
    Path(files["valid"][1]).write_text("only one line\n")
    with pytest.raises(SystemExit) as exit:
        main(["translate", "--out", str(tmp_path / "o"), "--train", *files["train"],
              "--valid", *files["valid"], "--test", *files["test"]])  # fmt: skip
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert "valid.fr has 10 lines" in error and "valid.en has 1" in error
    with pytest.raises(SystemExit) as exit:
        main(["translate", "--out", str(tmp_path / "o"), "--train", *files["train"]])
    assert exit.value.code == 2 and "go together" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:
        main(["nli", "--out", str(tmp_path / "o"), "--train", str(tmp_path / "missing.jsonl")])
    assert exit.value.code == 2 and "missing.jsonl: no such file" in capsys.readouterr().err


def test_the_nli_findings_name_the_settings_below_no_attention():
    # "every mapping >= NoAttention" held at the chosen parameters only; λ = 0.75 was below
    def row(setting, family, accuracy):
        return {"setting": setting, "family": family, "test_accuracy": accuracy, "support": 1.0}

    none = row("NoAttention", "NoAttention", 55.81)
    chosen = [none, row("sparsegen-lin λ=0.25", "sparsegen-lin", 56.40)]
    per_setting = [*chosen, row("sparsegen-lin λ=0.75", "sparsegen-lin", 55.54)]
    line = nli.findings(chosen, per_setting)[0]
    assert line.startswith("- Every attention mapping, at its parameter chosen on validation")
    assert line.endswith("Other settings below it (55.81): sparsegen-lin λ=0.75 (55.54).")
    chosen[1]["test_accuracy"] = 55.0
    line = nli.findings(chosen, per_setting)[0]
    assert line.startswith("- Below NoAttention (55.81) at the parameter chosen on validation: "
                           "sparsegen-lin λ=0.25 (55.00). Other")  # fmt: skip


def test_a_run_killed_while_writing_its_result_is_retrained_not_misread(tmp_path, monkeypatch):
    # the result was written in place: a kill mid-write left half a JSON file, and every
    # rerun stopped on it with a JSONDecodeError
    from sparsegen.experiments import runner

    path, written = tmp_path / "run.json", Path.write_text

    def killed(self, text, *args, **kwargs):
        written(self, text[: len(text) // 2])
        raise KeyboardInterrupt

    def job(*args, checkpoint, progress):
        return {"score": 1.0, "setting": "sparsemax"}

    monkeypatch.setattr(Path, "write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        runner._cached(job, path, 1, False)
    monkeypatch.undo()
    assert runner._cached(job, path, 1, False) == {"score": 1.0, "setting": "sparsemax"}


def test_a_run_file_that_is_no_run_is_warned_of_and_trained_again(tmp_path):
    # a garbled or foreign JSON in the runs folder stopped every rerun with a traceback
    # (JSONDecodeError, KeyError 'setting'); --report-only too
    from sparsegen.experiments import runner

    def job(*args, checkpoint, progress):
        return {"score": 1.0, "setting": "sparsemax"}

    tasks = [("sparsemax", (0,))]
    (path,) = [tmp_path / f"sparsemax-{runner.fingerprint((0,))}.json"]
    for garbage in ('{"setting": "softm', '{"foo": 1}', "[1, 2]", "\udcff"):
        path.write_text(garbage, errors="surrogateescape")
        with pytest.warns(UserWarning, match=r"is no finished run \("):
            assert runner.run_all(job, tasks, tmp_path, n_jobs=1, description="x",
                                  finished_only=True) == []  # fmt: skip
        with pytest.warns(UserWarning, match="it is trained again"):
            rows = runner.run_all(job, tasks, tmp_path, n_jobs=1, description="x")
        assert rows == [{"score": 1.0, "setting": "sparsemax"}]
        assert runner.run_all(job, tasks, tmp_path, n_jobs=1, description="x") == rows


def test_diverged_runs_are_never_chosen_over_trained_ones_and_the_report_says_so():
    # a run whose loss was NaN from its first epoch kept its initial weights and a
    # validation score of -inf; the reports ranked such runs and drew findings from them
    from sparsegen.experiments import runner

    rows = [
        {"family": "sparsemax", "setting": "a", "valid": -math.inf},
        {"family": "sparsemax", "setting": "b", "valid": 12.0},
        {"family": "sparsemax", "setting": "c", "valid": math.nan},
        {"family": "softmax", "setting": "d", "valid": -math.inf},
    ]
    for order in (rows, rows[::-1]):
        chosen = runner.best_per_family(order, "valid")
        assert [row["setting"] for row in chosen] in (["b", "d"], ["d", "b"])
    trained = runner.RunResult("sparsemax", "sparsemax", 0, valid=10.0, best_epoch=2, epochs=3)
    diverged = runner.RunResult("softmax", "softmax", 1, valid=-math.inf, best_epoch=0, epochs=1)
    assert runner.untrained_note([trained]) == []
    older = runner.RunResult("softmax", "softmax", 0, valid=9.0)  # (best_epoch read as 0)
    assert runner.untrained_note([trained, older]) == []
    (note, _) = runner.untrained_note([trained, diverged])
    assert note.startswith("**1 of 2 runs never improved on their initial weights**: softmax")


def test_findings_leave_out_the_families_whose_every_setting_has_a_diverged_run():
    # softmax never trained: "sparsemax − softmax: +NaN points" or a gap to an untrained
    # model's accuracy had been drawn as a finding
    from sparsegen.experiments import nli, runner

    chosen = [
        {"family": "softmax", "setting": "softmax", "valid_accuracy": -math.inf},
        {"family": "sparsemax", "setting": "sparsemax", "valid_accuracy": 80.0},
    ]
    per_setting = [
        *chosen,
        {"family": "sparsemax", "setting": "other", "valid_accuracy": -math.inf},
    ]
    trained, settings, left_out = runner.without_diverged(chosen, per_setting, "valid_accuracy")
    assert trained == chosen[1:] and settings == chosen[1:]
    assert left_out == [
        "- Left out of the findings: softmax, every setting of which has a run that never trained."
    ]
    assert runner.without_diverged(trained, settings, "valid_accuracy")[2] == []
    assert nli.findings(trained, settings) == []  # (no softmax to compare sparsemax with)
    assert nli.findings([], []) == []  # every family diverged: the line above alone


def test_an_empty_or_unknown_plan_is_refused_before_any_work(tmp_path):
    # an empty grid read as "not given" ran the default grid; no seed wrote means of
    # nothing (NaN); a negative budget trained 0 steps and reported it; an unknown method
    # failed deep inside, naming no argument
    from sparsegen.experiments import attention, hf, multilabel

    out = tmp_path / "never"
    calls = {
        "run_translation: grid is empty": lambda: translation.run_translation(out, grid=()),
        "run_translation: seeds is empty": lambda: translation.run_translation(out, seeds=()),
        "run_nli: grid is empty": lambda: nli.run_nli(out, grid=()),
        "run_hf: seeds is empty": lambda: hf.run_hf(out, seeds=()),
        "run_attention: seeds is empty": lambda: attention.run_attention(out, seeds=()),
        "run_attention: methods is empty": lambda: attention.run_attention(out, methods=()),
        r"run_attention: unknown methods \['nosuch'\]": lambda: attention.run_attention(
            out, methods=("nosuch",)
        ),
        "run_attention: budgets must be step counts": lambda: attention.run_attention(
            out, budgets=(-5,)
        ),
        "run_synthetic: seeds is empty": lambda: multilabel.run_synthetic(out, seeds=()),
        "run_table2: datasets is empty": lambda: multilabel.run_table2(out, datasets=()),
        r"run_table2: unknown methods \['nosuch'\]": lambda: multilabel.run_table2(
            out, ("emotions",), methods=("nosuch",)
        ),
    }
    for message, call in calls.items():
        with pytest.raises(ValueError, match=message):
            call()
    assert not out.exists()  # (nothing written before the check)
