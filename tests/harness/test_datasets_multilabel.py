"""Data loading: the shipped copies are the shared files, ARFF variants, errors; metrics."""

import gzip
import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsegen import datasets, metrics

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "multilabel"
PACKAGED = Path(datasets.__file__).parents[1] / "data" / "multilabel"


def test_shipped_copies_match_the_published_checksums():
    sums = {}
    for line in (PACKAGED / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name.removeprefix("./")] = digest
    checked = 0
    for path in PACKAGED.glob("*/*"):
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        name = str(path.relative_to(PACKAGED)).removesuffix(".gz")
        assert hashlib.sha256(raw).hexdigest() == sums[name], name
        checked += 1
    assert checked >= 15


@pytest.mark.parametrize(
    ("name", "subset", "shape", "labels", "cardinality"),
    [
        ("scene", "train", (1211, 294), 6, 1.07),
        ("emotions", "test", (202, 72), 6, 1.98),
        ("birds", "train", (322, 271), 19, 1.06),
        ("cal500", "all", (502, 68), 174, 26.04),
        ("medical", "train", (333, 1449), 45, 1.26),
        ("enron", "test", (579, 1001), 53, 3.36),
        ("reuters-k500", "train", (3000, 500), 103, 1.47),
    ],
)
def test_benchmarks_by_name(name, subset, shape, labels, cardinality):
    data = datasets.load_mulan(name, subset)
    assert data.X.shape == shape and data.Y.shape == (shape[0], labels)
    assert len(data.label_names) == labels and len(data.feature_names) == shape[1]
    assert abs(data.Y.sum(1).mean() - cardinality) < 0.01
    assert sp.issparse(data.X) == (name in ("medical", "enron", "reuters-k500"))


def test_birds_has_unlabelled_rows_and_one_hot_location():
    data = datasets.load_mulan("birds", "test")
    assert (data.Y.sum(1) == 0).sum() == 151
    location = [n for n in data.feature_names if n.startswith("location=")]
    assert len(location) == 12
    X = data.X[:, [data.feature_names.index(n) for n in location]]
    np.testing.assert_array_equal(X.sum(1), 1)


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared data not beside the project")
def test_data_home_and_environment_variable(monkeypatch):
    from_shared = datasets.load_mulan("emotions", "train", data_home=SHARED)
    packaged = datasets.load_mulan("emotions", "train")
    np.testing.assert_array_equal(from_shared.X, packaged.X)
    monkeypatch.setenv(datasets.DATA_ENV, str(SHARED))
    assert datasets.load_mulan("scene", "test").X.shape == (1196, 294)


def test_nominal_as_values():
    onehot = datasets.load_mulan("birds", "train")
    values = datasets.load_mulan("birds", "train", nominal="value")
    assert values.X.shape[1] == onehot.X.shape[1] - 11
    column = values.X[:, values.feature_names.index("location")]
    assert set(np.unique(column)) <= {2, 10, 1, 7, 5, 4, 17, 15, 16, 8, 13, 11}
    with pytest.raises(ValueError, match="nominal must be"):
        datasets.load_mulan("birds", nominal="ordinal")


def test_labels_argument_forms(tmp_path):
    arff = tmp_path / "tiny.arff"
    arff.write_text(
        "@relation 'tiny: -C -2'\n@attribute f1 numeric\n@attribute f2 {a,b,c}\n"
        "@attribute l1 {0,1}\n@attribute l2 {0,1}\n@data\n1.5,a,1,0\n-2,c,0,1\n"
    )
    by_meka = datasets.load_arff(arff)
    by_count = datasets.load_arff(arff, labels=2)
    by_name = datasets.load_arff(arff, labels=["l2", "l1"])
    np.testing.assert_array_equal(datasets.load_arff(arff, labels=np.array(["l2", "l1"])).Y,
                                  by_name.Y)  # fmt: skip
    np.testing.assert_array_equal(by_meka.Y, [[1, 0], [0, 1]])
    np.testing.assert_array_equal(by_count.Y, by_meka.Y)
    np.testing.assert_array_equal(by_name.Y, [[0, 1], [1, 0]])
    assert by_meka.feature_names == ["f1", "f2=a", "f2=b", "f2=c"]
    np.testing.assert_array_equal(by_meka.X, [[1.5, 1, 0, 0], [-2, 0, 0, 1]])
    by_index = datasets.load_arff(arff, nominal="value")  # not numbers: their index
    np.testing.assert_array_equal(by_index.X, [[1.5, 0], [-2, 2]])
    xml = tmp_path / "tiny.xml"
    xml.write_text(
        '<labels xmlns="http://mulan.sourceforge.net/labels"><label name="l1"/></labels>'
    )
    assert datasets.load_arff(arff, labels=xml).label_names == ["l1"]
    for labels in (True, 2.0, {"l1"}, frozenset({"l1"}), {"l1": 0}):  # (a set: no column order)
        with pytest.raises(TypeError, match="labels must be a count, names in order"):
            datasets.load_arff(arff, labels=labels)
    for labels in ([], ["l1", "l1"], ["f1", "f2", "l1", "l2"]):  # none, twice, every one
        with pytest.raises(ValueError, match="labels must name distinct attributes"):
            datasets.load_arff(arff, labels=labels)
    with pytest.raises(ValueError, match=r"tiny\.arff: label 'f2' takes the values \{a,b,c\}"):
        datasets.load_arff(arff, labels=["f2"])


def test_sparse_arff_with_labels_first(tmp_path):
    arff = tmp_path / "sparse.arff"
    arff.write_text(
        "@relation 'meka: -C 2'\n@attribute y1 {0,1}\n@attribute y2 {0,1}\n"
        "@attribute w1 numeric\n@attribute w2 numeric\n@data\n{0 1,3 2.5}\n{}\n{1 1,2 4}\n"
    )
    data = datasets.load_arff(arff)
    assert sp.issparse(data.X) and data.X.shape == (3, 2)
    np.testing.assert_array_equal(data.X.toarray(), [[0, 2.5], [0, 0], [4, 0]])
    np.testing.assert_array_equal(data.Y, [[1, 0], [0, 0], [0, 1]])


def test_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.arff"):
        datasets.load_arff(tmp_path / "missing.arff", labels=1)
    bad = tmp_path / "bad.arff"
    bad.write_text("@relation r\n@attribute a numeric\n@attribute l {0,1}\n@data\n1,0\nx,1\n")
    with pytest.raises(ValueError, match=r"bad\.arff.*line 6"):
        datasets.load_arff(bad, labels=1)
    good = tmp_path / "good.arff"
    good.write_text("@relation r\n@attribute a numeric\n@attribute l {0,1}\n@data\n1,0\n")
    with pytest.raises(ValueError, match="no MEKA '-C n'"):
        datasets.load_arff(good)
    with pytest.raises(ValueError, match="not in the file"):
        datasets.load_arff(good, labels=["nope"])
    with pytest.raises(ValueError, match=r"unknown dataset 'scenes': not shipped \(birds, cal500"):
        datasets.load_mulan("scenes")
    for name in (None, 3):
        with pytest.raises(TypeError, match=r"load_mulan: name must be a dataset name \(a str\)"):
            datasets.load_mulan(name)
    with pytest.raises(ValueError, match="no official train/test split"):
        datasets.load_mulan("cal500", "train")


HEADER = "@relation r\n@attribute a numeric\n@attribute c {red,green}\n@attribute l {0,1}\n@data\n"


def _write(path, text, binary=False):
    (path.write_bytes if binary else path.write_text)(text)
    return path


def test_missing_values_raise_or_become_nan(tmp_path):
    dense = _write(tmp_path / "dense.arff", HEADER + "1,red,0\n2,?,1\n?,green,0\n")
    with pytest.raises(ValueError, match=r"dense\.arff, line 7: missing value \('\?'\) for 'c'"):
        datasets.load_arff(dense, labels=1)
    data = datasets.load_arff(dense, labels=1, missing="nan")
    assert data.feature_names == ["a", "c=red", "c=green"]
    np.testing.assert_array_equal(data.X[1], [2.0, np.nan, np.nan])  # the whole one-hot block
    assert np.isnan(data.X[2, 0]) and data.X[2, 2] == 1
    assert np.isnan(datasets.load_arff(dense, labels=1, missing="nan", nominal="value").X[1, 1])
    unlabelled = _write(tmp_path / "label.arff", HEADER + "1,red,?\n")
    with pytest.raises(ValueError, match=r"line 6: missing value \('\?'\) for 'l'$"):
        datasets.load_arff(unlabelled, labels=1, missing="nan")
    sparse_header = "@relation r\n@attribute a numeric\n@attribute b numeric\n@attribute l {0,1}\n"
    sparse = _write(tmp_path / "sparse.arff", sparse_header + "@data\n{0 1,2 1}\n{1 ?}\n")
    with pytest.raises(ValueError, match=r"sparse\.arff, line 7: missing value .* for 'b'"):
        datasets.load_arff(sparse, labels=1)
    assert np.isnan(datasets.load_arff(sparse, labels=1, missing="nan").X[1, 1])
    # a sparse label's gap, as a dense one's, without advice that cannot help
    unlabelled = _write(tmp_path / "sparse_label.arff", sparse_header + "@data\n{0 1,2 ?}\n")
    for missing in ("raise", "nan"):
        with pytest.raises(ValueError, match=r"line 6: missing value \('\?'\) for 'l'$"):
            datasets.load_arff(unlabelled, labels=1, missing=missing)


def test_a_sparse_row_giving_an_attribute_twice_is_an_error_however_spelled(tmp_path):
    header = "@relation r\n@attribute a numeric\n@attribute b numeric\n@attribute l {0,1}\n@data\n"
    for row in ("{1 2, 1 5}", "{1 2, 01 5}", "{2 1, 1 2, 001 5}"):  # (liac-arff kept the last)
        path = _write(tmp_path / "twice.arff", header + "{0 1}\n" + row + "\n")
        with pytest.raises(ValueError, match=r"line 7: attribute 'b' \(index 1\) appears twice"):
            datasets.load_arff(path, labels=1)


def test_features_written_as_nan_or_inf_are_errors_as_question_marks_are(tmp_path):
    dense = _write(tmp_path / "dense.arff", HEADER + "1,red,0\nnan,red,1\n")
    with pytest.raises(ValueError, match=r"line 7: feature 'a' is nan, not a number; use miss"):
        datasets.load_arff(dense, labels=1)
    assert np.isnan(datasets.load_arff(dense, labels=1, missing="nan").X[1, 0])
    infinite = _write(tmp_path / "inf.arff", HEADER + "1,red,0\n-inf,red,1\n")
    sparse_header = "@relation r\n@attribute a numeric\n@attribute b numeric\n@attribute l {0,1}\n"
    sparse = _write(tmp_path / "sparse.arff", sparse_header + "@data\n{0 1,2 1}\n{1 inf}\n")
    for path, line, name in ((infinite, 7, "a"), (sparse, 7, "b")):
        for missing in ("raise", "nan"):  # (an infinity is no missing value)
            with pytest.raises(
                ValueError, match=rf"line {line}: feature '{name}' is -?inf, not a number$"
            ):
                datasets.load_arff(path, labels=1, missing=missing)


@pytest.mark.parametrize("nominal", ["onehot", "value"])
def test_sparse_nominal_attributes_read_as_the_dense_file_does(tmp_path, nominal):
    # an omitted sparse value is a nominal attribute's first declared value (the ARFF rule),
    # not 0: loc omitted is 2, label L0 declared {1,0} omitted is 1; one-hot applies too
    header = "@relation r\n@attribute f0 numeric\n@attribute loc {2,10,b}\n"
    header += "@attribute L0 {1,0}\n@attribute L1 {0,1}\n@data\n"
    dense, sparse = tmp_path / "dense.arff", tmp_path / "sparse.arff"
    dense.write_text(header + "1.5,2,1,1\n0,10,0,0\n0,b,1,1\n")
    sparse.write_text(header + "{0 1.5, 3 1}\n{1 10, 2 0}\n{1 b, 3 1}\n")
    expected = datasets.load_arff(dense, labels=2, nominal=nominal)
    got = datasets.load_arff(sparse, labels=2, nominal=nominal)
    assert sp.issparse(got.X) and got.feature_names == expected.feature_names
    np.testing.assert_array_equal(got.X.toarray(), expected.X)
    np.testing.assert_array_equal(got.Y, expected.Y)
    assert got.Y.tolist() == [[1, 1], [0, 0], [1, 1]]


def test_declarations_separated_by_tabs(tmp_path):
    # Weka's tokenizer takes a tab for whitespace; liac-arff raised a bare ValueError
    path = tmp_path / "tabs.arff"
    path.write_text("@relation r\n@attribute\tf0\tnumeric\n@attribute\tL0\t{0,1}\n"
                    "@attribute L1 {0,1}\n@data\n1.5,1,0\n2,0,1\n")  # fmt: skip
    data = datasets.load_arff(path, labels=2)
    assert data.X.tolist() == [[1.5], [2.0]] and data.Y.tolist() == [[1, 0], [0, 1]]
    # one label named by a string, not by its characters
    assert datasets.load_arff(path, labels="L1").label_names == ["L1"]


def test_sparse_rows_that_are_empty_or_repeat_an_index(tmp_path):
    header = "@relation r\n@attribute a numeric\n@attribute l {0,1}\n@data\n"
    empty = _write(tmp_path / "empty.arff", header + "{}\n{}\n{}\n")
    data = datasets.load_arff(empty, labels=1)
    assert data.X.shape == (3, 1) and data.Y.shape == (3, 1)
    twice = _write(tmp_path / "twice.arff", header + "{0 1}\n{0 2,0 3}\n")
    with pytest.raises(ValueError, match=r"twice\.arff, line 6: attribute 'a' .* twice"):
        datasets.load_arff(twice, labels=1)


def test_meka_label_counts_out_of_range(tmp_path):
    body = "@attribute a numeric\n@attribute l {0,1}\n@data\n1,0\n"
    for c in ("0", "2", "-5"):
        path = _write(tmp_path / f"meka{c}.arff", f"@relation 'r: -C {c}'\n" + body)
        with pytest.raises(ValueError, match=rf"-C {c}' must name between 1 and 1 label"):
            datasets.load_arff(path)


def test_a_user_layout_with_a_file_missing_names_that_file(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    _write(folder / "mine-train.arff", HEADER + "1,red,0\n")
    _write(folder / "mine-test.arff", HEADER + "1,red,0\n")
    # (it had been "unknown dataset 'mine'", which the folder is not)
    with pytest.raises(ValueError, match=r"mine: mine\.xml not found \(MULAN's layout"):
        datasets.load_mulan("mine", data_home=tmp_path)
    (folder / "mine-test.arff").unlink()
    with pytest.raises(ValueError, match=r"mine-test\.arff and mine\.xml not found"):
        datasets.load_mulan("mine", data_home=tmp_path)
    _write(folder / "mine.arff", HEADER + "1,red,0\n")  # MEKA's single file, without -C n
    with pytest.raises(ValueError, match=r"no MEKA '-C n' .*: add one .*beside the file"):
        datasets.load_mulan("mine", "all", data_home=tmp_path)


def test_unreadable_files_are_named(tmp_path, monkeypatch):
    latin = _write(tmp_path / "latin.arff", (HEADER + "1,red,0\n").encode() + b"\xe9\n", True)
    with pytest.raises(ValueError, match=r"latin\.arff: not a readable"):
        datasets.load_arff(latin, labels=1)
    fake_gzip = _write(tmp_path / "fake.arff.gz", b"not gzip at all", True)
    with pytest.raises(ValueError, match=r"fake\.arff\.gz: not a readable"):
        datasets.load_arff(fake_gzip, labels=1)
    truncated = tmp_path / "cut.arff.gz"
    truncated.write_bytes(gzip.compress((HEADER + "1,red,0\n" * 200).encode())[:60])
    with pytest.raises(ValueError, match=r"cut\.arff\.gz: not a readable"):
        datasets.load_arff(truncated, labels=1)
    # flipped bytes: gzip checks its CRC at the end, after the parser read garbage
    flipped = bytearray(gzip.compress((HEADER + "1,red,0\n2,green,1\n").encode()))
    flipped[20] ^= 0xFF
    flipped[25] ^= 0xFF
    corrupt = _write(tmp_path / "flipped.arff.gz", bytes(flipped), True)
    with pytest.raises(ValueError, match=r"flipped\.arff\.gz: not a readable .*: CRC check"):
        datasets.load_arff(corrupt, labels=1)
    # through $SPARSEGEN_DATA too
    (tmp_path / "scene").mkdir()
    (tmp_path / "scene" / "scene-train.arff.gz").write_bytes(b"broken")
    (tmp_path / "scene" / "scene.xml").write_text("<labels><label name='l'/></labels>")
    monkeypatch.setenv("SPARSEGEN_DATA", str(tmp_path))
    with pytest.raises(ValueError, match=r"scene-train\.arff\.gz: not a readable"):
        datasets.load_mulan("scene")


def test_byte_order_mark_string_attributes_and_label_files(tmp_path):
    bom = _write(tmp_path / "bom.arff", b"\xef\xbb\xbf" + (HEADER + "1,red,0\n").encode(), True)
    assert datasets.load_arff(bom, labels=1).X.shape == (1, 3)
    text = "@relation r\n@attribute s string\n@attribute l {0,1}\n@data\n'red',0\n"
    strings = _write(tmp_path / "strings.arff", text)
    with pytest.raises(ValueError, match=r"strings\.arff: string attributes .* \['s'\]"):
        datasets.load_arff(strings, labels=1)
    nameless = _write(tmp_path / "labels.xml", "<labels><label name='l'/><label/></labels>")
    with pytest.raises(ValueError, match=r"labels\.xml: <label> number 2 has no name"):
        datasets.load_arff(bom, labels=nameless)
    upper = _write(tmp_path / "LABELS.XML", "<labels><label name='l'/></labels>")
    assert datasets.load_arff(bom, labels=upper).label_names == ["l"]


def test_rcv1_offline_error(monkeypatch):
    import sklearn.datasets

    def offline(**kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(sklearn.datasets, "fetch_rcv1", offline)
    with pytest.raises(RuntimeError, match="could not be fetched"):
        datasets.fetch_rcv1_multilabel()


def test_rcv1_path_on_small_data(monkeypatch):
    import sklearn.datasets
    from sklearn.utils import Bunch

    target = sp.csr_matrix(np.array([[1, 0, 1], [0, 1, 0]]))
    bunch = Bunch(data=sp.csr_matrix(np.eye(2, 4)), target=target, target_names=["a", "b", "c"])
    monkeypatch.setattr(sklearn.datasets, "fetch_rcv1", lambda **kwargs: bunch)
    data = datasets.fetch_rcv1_multilabel()
    np.testing.assert_array_equal(data.Y, target.toarray())
    assert data.label_names == ["a", "b", "c"] and data.X.shape == (2, 4)
    # by name, any case, like the shipped sets
    assert datasets.multilabel.dataset_layout("RCV1") == ("rcv1", {"fetched": True})
    X, Y = datasets.load_mulan("rcv1", "test", return_X_y=True)
    assert sp.issparse(X) and np.array_equal(Y, target.toarray())


@pytest.mark.parametrize(
    ("setting", "value"), [("mean", 2), ("mean", 8), ("range", 3), ("length", 300)]
)
def test_synthetic_settings(setting, value):
    data = datasets.make_laha_synthetic(setting, value, n_samples=600, random_state=1)
    assert data.X.shape == (600, 20) and data.Y.shape == (600, 10)
    assert (data.Y.sum(1) > 0).all()
    if setting == "mean":  # the mean label count follows μ (scikit-learn's Poisson draws)
        assert abs(data.Y.sum(1).mean() - value) < 1.5
    with pytest.raises(ValueError, match="setting must be"):
        datasets.make_laha_synthetic("median", 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_rows_share_one_generative_model(seed):
    # Each label's word profile, seen in rows with few labels and in rows with many, is
    # the same p(w|c): drawn once per data set, not once per label count (with one draw
    # per count, "range" r = 4 mixed nine unrelated tasks: correlations of 0.15-0.25).
    data = datasets.make_laha_synthetic("range", 4, n_samples=1500, random_state=seed)
    words = data.X / data.X.sum(1, keepdims=True)
    count = data.Y.sum(1)
    few, many = count <= 3, count >= 6
    correlations = []
    for label in range(data.Y.shape[1]):
        has = data.Y[:, label] == 1
        if (few & has).sum() < 5 or (many & has).sum() < 5:
            continue
        profile_few = words[few & has].mean(0) - words[few].mean(0)
        profile_many = words[many & has].mean(0) - words[many].mean(0)
        correlations.append(np.corrcoef(profile_few, profile_many)[0, 1])
    assert len(correlations) >= 5 and np.mean(correlations) > 0.8


@pytest.mark.parametrize(
    ("setting", "value", "more", "match"),
    [
        ("mean", math.inf, {}, "'mean' needs a finite value ≥ 1; got inf"),
        ("mean", math.nan, {}, "'mean' needs a finite value ≥ 1; got nan"),
        ("range", -1, {}, "'range' needs a finite value ≥ 0; got -1"),
        ("length", 0, {}, "'length' needs a finite value ≥ 1; got 0"),
        ("mean", 3, {"n_samples": 0}, "n_samples and document_length must be ≥ 1; got 0"),
        ("range", 2, {"document_length": 0}, "must be ≥ 1; got 1200 and 0"),
    ],
)
def test_synthetic_parameters_out_of_range_are_named(setting, value, more, match):
    # (NumPy's "low >= high" or OverflowError, or "need at least one array", before)
    with pytest.raises(ValueError, match=re.escape(match)):
        datasets.make_laha_synthetic(setting, value, **more)


def test_metrics_against_hand_computed_values():
    Y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    P = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0]])
    # tp = 3, fp = 1, fn = 2
    assert metrics.micro_f1(Y, P) == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
    # per label: precision (1, 1, 0), recall (1, 0.5, 0)
    p, r = 2 / 3, 0.5
    assert metrics.macro_f1_harmonic(Y, P) == pytest.approx(2 * p * r / (p + r))
    assert metrics.macro_f1(Y, P) == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert metrics.hamming_loss(Y, P) == pytest.approx(3 / 9)
    assert metrics.jensen_shannon_divergence(Y, Y) == pytest.approx(0)
    one_hot = np.array([[1.0, 0.0]])
    assert metrics.jensen_shannon_divergence(one_hot, one_hot[:, ::-1]) == pytest.approx(1.0)


def test_jensen_shannon_divergence_of_bad_rows_is_an_error_and_huge_ones_scale():
    # rows of NaN, of negative weights or of no class used to pass as uniform (or give inf)
    target = np.array([[0.0, 1.0]])
    for bad in ([[np.nan, 1.0]], [[-1.0, 0.5]], [[np.inf, 1.0]]):
        with pytest.raises(ValueError, match="finite non-negative"):
            metrics.jensen_shannon_divergence(bad, target)
    for P, Q in ((np.zeros((2, 0)), np.zeros((2, 0))), ([0.5, 0.5], [1.0, 0.0])):
        with pytest.raises(ValueError, match="2-D"):
            metrics.jensen_shannon_divergence(P, Q)
    with pytest.raises(ValueError, match="one shape"):
        metrics.jensen_shannon_divergence([[0.5, 0.5]], [[1.0, 0.0, 0.0]])
    # finite weights whose sum overflows are the distribution they are: uniform here
    huge = metrics.jensen_shannon_divergence([[1e308, 1e308]], [[1.0, 0.0]])
    assert huge == pytest.approx(metrics.jensen_shannon_divergence([[0.5, 0.5]], [[1.0, 0.0]]))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 30),
    st.integers(2, 6),  # one column would be read as a binary target by scikit-learn
    st.integers(1, 10),
    st.integers(0, 2**31 - 1),
)
def test_f1_from_summed_chunk_confusions_equals_the_whole_set_scores(rows, labels, chunk, seed):
    from sklearn.metrics import multilabel_confusion_matrix

    rng = np.random.default_rng(seed)
    Y = (rng.random((rows, labels)) < rng.random()).astype(int)  # labels never seen, too
    P = (rng.random((rows, labels)) < rng.random()).astype(int)
    confusion = sum(
        multilabel_confusion_matrix(Y[lo : lo + chunk], P[lo : lo + chunk])
        for lo in range(0, rows, chunk)
    )
    micro, macro = metrics.f1_from_confusion(confusion)
    assert micro == pytest.approx(metrics.micro_f1(Y, P), abs=1e-12)
    assert macro == pytest.approx(metrics.macro_f1_harmonic(Y, P), abs=1e-12)


def test_return_x_y_unpacks_like_scikit_learn_loaders():
    X, Y = datasets.load_mulan("emotions", "test", return_X_y=True)
    full = datasets.load_mulan("emotions", "test")
    assert np.array_equal(X, full.X) and np.array_equal(Y, full.Y)
    with pytest.raises(ValueError, match="no official train/test split: use subset='all'"):
        datasets.load_mulan("cal500", "train", return_X_y=True)
