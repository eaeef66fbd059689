"""The reproduction runner, on small inputs: protocol pieces and output files."""

import numpy as np
import pytest
import scipy.sparse as sp

from sparsegen.cli import main
from sparsegen.experiments import multilabel
from sparsegen.experiments.settings import Setting


def test_standardise_uses_training_statistics():
    X_train = np.array([[1.0, 5.0], [3.0, 5.0]])
    X_test = np.array([[2.0, 7.0]])
    train, test = multilabel.standardise(X_train, X_test)
    np.testing.assert_allclose(train, [[-1, 0], [1, 0]])  # population std; constant column at 0
    np.testing.assert_allclose(test, [[0, 2]])


def test_sparse_features_are_scaled_not_centred_and_stay_sparse():
    rng = np.random.default_rng(0)
    X_train = sp.random(50, 8, density=0.3, format="csr", random_state=1) * 5
    X_test = sp.random(20, 8, density=0.3, format="csr", random_state=2)
    train, test = multilabel.standardise(X_train, X_test)
    assert sp.issparse(train) and sp.issparse(test) and train.nnz == X_train.nnz
    std = X_train.toarray().std(0)
    std[std == 0] = 1.0
    np.testing.assert_allclose(train.toarray(), X_train.toarray() / std)
    np.testing.assert_allclose(test.toarray(), X_test.toarray() / std)
    dense_train, _ = multilabel.standardise(X_train.toarray(), rng.random((2, 8)))
    np.testing.assert_allclose(dense_train.mean(0), 0, atol=1e-12)  # dense: centred


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
    assert result.selected["micro"].reg in (1.0, 1e-2)
    assert result.selected["micro"].value in [s.value for s in multilabel.METHODS[method]]
    assert 20 < result.tests["micro"] <= 100 and 0 < result.tests["macro"] <= 100


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


def test_synthetic_point_and_plots(tmp_path, monkeypatch):
    fitted_on = []  # the scaler's statistics come from the 60% of training rows only
    standardise = multilabel.standardise
    monkeypatch.setattr(
        multilabel, "standardise", lambda a, b: fitted_on.append(a) or standardise(a, b)
    )
    runs = multilabel._synthetic_point("mean", 3, seed=0, n_samples=300)
    data = multilabel.make_laha_synthetic("mean", 3, n_samples=300, random_state=0)
    assert len(fitted_on) == 1 and np.array_equal(fitted_on[0], data.X[:180])
    rows = [run.to_row() for run in runs]
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


def _rcv1_scaled_down(subset, data_home=None, download_if_missing=True):
    """scikit-learn's fetch_rcv1 at 1/100 of RCV1-v2's rows (231 train / 7,813 test), its 103
    labels, each row with at least one; 120 sparse features (not 472: the fits' cost is
    in their number, and 120 keep the labels learnable from 231 rows)."""
    from sklearn.utils import Bunch

    rows = {"train": 231, "test": 7_813}[subset]
    weights = np.random.default_rng(0).normal(size=(120, 103))  # both subsets' labels
    X = sp.random(rows, 120, density=0.05, format="csr", random_state=rows) * 3
    scores = X @ weights
    Y = (scores >= np.sort(scores, axis=1)[:, -3:-2]).astype(np.int8)  # its 3 best labels
    return Bunch(data=X, target=sp.csr_matrix(Y), target_names=[f"t{j}" for j in range(103)])


def test_rcv1_runs_the_protocol_sparse_and_in_chunks(tmp_path, monkeypatch):
    import sklearn.datasets

    from sparsegen.linear_model import LinearMultilabelClassifier

    monkeypatch.setattr(sklearn.datasets, "fetch_rcv1", _rcv1_scaled_down)
    monkeypatch.setattr(multilabel, "REG_GRID", (1e-3,))
    monkeypatch.setattr(multilabel, "PREDICT_CHUNK_ROWS", 1000)
    split = multilabel.load_split("rcv1")
    assert sp.issparse(split.X_train) and sp.issparse(split.X_test)
    assert split.X_test.shape == (7_813, 120) and split.Y_train.shape == (231, 103)
    predicted_rows = []
    predict = LinearMultilabelClassifier.predict

    def recording_predict(self, X):
        assert sp.issparse(X)
        predicted_rows.append(X.shape[0])
        return predict(self, X)

    monkeypatch.setattr(LinearMultilabelClassifier, "predict", recording_predict)
    args = ["multilabel", "--out", str(tmp_path), "--datasets", "RCV1", "--skip-synthetic"]
    assert main([*args, "--jobs", "1"]) == 0
    assert max(predicted_rows) == 1000 and sum(predicted_rows) > 7_813  # the test set, chunked
    rows = {r["method"]: r for r in _csv_rows(tmp_path / "table2.csv")}
    assert set(rows) == set(multilabel.METHODS)
    # the labels are a function of the features: well above guessing 3 of 103 (micro-F1 2.9)
    assert all(float(r["micro_f1"]) > 8 for r in rows.values())


def test_chunked_test_scores_equal_the_whole_set_scores(monkeypatch):
    from sparsegen.metrics import macro_f1_harmonic, micro_f1

    split = multilabel.load_split("reuters-k500")  # shipped, sparse (MEKA's split)
    assert sp.issparse(split.X_train)
    sparsemax = Setting("sparsemax", "sparsemax", lam=0.5)
    clf = multilabel._fit(sparsemax, 1e-3, split.X_train, split.Y_train, max_iter=10)
    monkeypatch.setattr(multilabel, "PREDICT_CHUNK_ROWS", 333)
    chunked = multilabel._f1_scores(clf, split.X_test, split.Y_test, sparsemax)
    whole = clf.predict(split.X_test)
    assert chunked[0] == pytest.approx(micro_f1(split.Y_test, whole), abs=1e-12)
    assert chunked[1] == pytest.approx(macro_f1_harmonic(split.Y_test, whole), abs=1e-12)


def _csv_rows(path):
    import csv

    with open(path, newline="") as fp:
        return list(csv.DictReader(fp))
