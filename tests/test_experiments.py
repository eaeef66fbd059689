"""The reproduction runner, on small inputs: protocol pieces and output files."""

import numpy as np
import pytest

from sparsegen.cli import main
from sparsegen.experiments import multilabel


def test_standardise_uses_training_statistics():
    X_train = np.array([[1.0, 5.0], [3.0, 5.0]])
    X_test = np.array([[2.0, 7.0]])
    train, test = multilabel.standardise(X_train, X_test)
    np.testing.assert_allclose(train, [[-1, 0], [1, 0]])  # population std; constant column at 0
    np.testing.assert_allclose(test, [[0, 2]])


def test_splits_follow_the_protocol():
    birds = multilabel.load_split("birds")
    assert (birds.Y_train.sum(1) > 0).all() and (birds.Y_test.sum(1) > 0).all()
    assert birds.X_train.shape[0] == 322 - 143 and any("dropped" in n for n in birds.notes)
    assert birds.X_train.shape[1] == 260  # location read as its value, as the scripts did
    np.testing.assert_allclose(birds.X_train.mean(0), 0, atol=1e-10)
    cal = multilabel.load_split("cal500")
    assert cal.X_train.shape[0] + cal.X_test.shape[0] == 502
    assert multilabel.load_split("cal500").X_test.shape == cal.X_test.shape  # seeded


@pytest.mark.parametrize("method", list(multilabel.METHODS))
def test_select_and_test_on_a_small_split(method, monkeypatch):
    monkeypatch.setattr(multilabel, "REG_GRID", (1.0, 1e-2))
    split = multilabel.load_split("emotions")
    split.X_train, split.Y_train = split.X_train[:150], split.Y_train[:150]
    result = multilabel.select_and_test(split, method, folds=3, max_iter=30)
    assert result["micro_reg"] in (1.0, 1e-2)
    assert result["micro_rule"] in multilabel.METHODS[method]["rule"][1]
    assert 20 < result["micro_f1"] <= 100 and 0 < result["macro_f1"] <= 100


@pytest.mark.parametrize("shuffled", [False, True])
def test_cli_writes_the_table(tmp_path, monkeypatch, shuffled):
    monkeypatch.setattr(multilabel, "REG_GRID", (1.0,))
    out = tmp_path / "out"
    args = ["multilabel", "--out", str(out), "--datasets", "emotions", "--skip-synthetic"]
    args += ["--jobs", "1"] + (["--shuffled-folds"] if shuffled else [])
    assert main(args) == 0
    table = (out / "table2.md").read_text()
    assert "| emotions | softmax |" in table and "67.34" in table  # the paper's number beside
    assert ("| micro, shuffled folds |" in table) is shuffled
    rows = (1 + shuffled) * len(multilabel.METHODS)
    assert (out / "table2.csv").read_text().count("\n") == 1 + rows
    # every table row has as many cells as the header
    lines = [line for line in table.splitlines() if line.startswith("| emotions")]
    header = next(line for line in table.splitlines() if line.startswith("| dataset | method |"))
    assert all(line.count("|") == header.count("|") for line in lines[: len(multilabel.METHODS)])


def test_synthetic_point_and_plots(tmp_path):
    rows = multilabel._synthetic_point("mean", 3, seed=0, n_samples=300)
    assert {r["method"] for r in rows} == set(multilabel.SYNTHETIC_METHODS)
    assert all(0 <= r["jsd"] <= 1 and 0 < r["micro_f1"] <= 100 for r in rows)
    multilabel.plot_synthetic(
        [dict(r, setting=s) for r in rows for s in multilabel.SYNTHETIC_SETTINGS], tmp_path
    )
    assert (tmp_path / "synthetic_micro_f1.png").stat().st_size > 10_000


def test_synthetic_ordering_sentences():
    rows = [
        {"setting": s, "value": v, "method": m, "micro_f1": score + v, "jsd": 1 / score, "seed": 0}
        for s, (_, values) in multilabel.SYNTHETIC_SETTINGS.items()
        for v in values[:2]
        for m, score in zip(multilabel.SYNTHETIC_METHODS, (10, 40, 30, 20), strict=True)
    ]
    sentences = multilabel.synthetic_ordering(rows)
    assert len(sentences) == 2 * len(multilabel.SYNTHETIC_SETTINGS)
    assert "sparsemax+huber" in sentences[0].split(": ", 1)[1].split(" > ")[0]
    assert sentences[1].split(": ", 1)[1].startswith("sparsemax+huber")  # lowest JSD first
    text = multilabel.synthetic_markdown(rows)
    assert "What these runs show" in text
    assert "](synthetic_micro_f1.png)" in text and "](synthetic_jsd.png)" in text
