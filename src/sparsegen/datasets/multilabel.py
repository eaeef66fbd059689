"""Multi-label data: MULAN/MEKA ARFF files, the benchmarks by name, Laha et al.'s synthetic sets.

The small MULAN/MEKA benchmarks ship with the package (gzipped ARFF, about
4 MB), so nothing needs a download. A data directory laid out like the
package's (``<dir>/<name>/<name>-train.arff`` …, plain or ``.gz``) can be
given as ``data_home=`` or through the ``SPARSEGEN_DATA`` environment variable.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from sparsegen._extras import needs_extra
from sparsegen.datasets._files import checked_name, data_folder, find_file

__all__ = [
    "BENCHMARKS",
    "DatasetUnavailable",
    "MultilabelData",
    "check_same_columns",
    "dataset_layout",
    "fetch_rcv1_multilabel",
    "load_arff",
    "load_mulan",
    "make_laha_synthetic",
]

DATA_ENV = "SPARSEGEN_DATA"


class MultilabelData(NamedTuple):
    """Features ``X`` (dense array or CSR), 0/1 labels ``Y`` (int8) and their names."""

    X: np.ndarray | sp.csr_matrix
    Y: np.ndarray
    feature_names: list[str]
    label_names: list[str]


# name -> (files for train, test; None = no official split), label source
BENCHMARKS: dict[str, dict] = {
    "scene": {"train": "scene-train.arff", "test": "scene-test.arff", "labels": "scene.xml"},
    "emotions": {
        "train": "emotions-train.arff",
        "test": "emotions-test.arff",
        "labels": "emotions.xml",
    },
    "birds": {"train": "birds-train.arff", "test": "birds-test.arff", "labels": "birds.xml"},
    "cal500": {"all": "cal500.arff", "labels": "cal500.xml"},
    "medical": {
        "train": "medical-train.arff",
        "test": "medical-test.arff",
        "labels": "medical.xml",
    },
    "enron": {"train": "enron-train.arff", "test": "enron-test.arff", "labels": "enron.xml"},
    # MEKA format: labels first (-C 103); the first 3000 rows are MEKA's training split.
    "reuters-k500": {"all": "REUTERS-K500-EX2.arff", "labels": None, "split": 3000},
}
"""The shipped multi-label benchmarks :func:`load_mulan` reads, by name: their files and
where their labels are declared."""
# Not shipped: fetched by scikit-learn on first use (needs the network once).
FETCHED = {"rcv1": "RCV1-v2, scikit-learn's fetch_rcv1 (LYRL2004 split)"}


def _open_text(path: Path):
    # utf-8-sig: a byte-order mark some editors write is not part of the header
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")


# What a truncated, corrupt or non-UTF-8 file raises while it is read.
_READ_ERRORS = (UnicodeDecodeError, gzip.BadGzipFile, zlib.error, EOFError, OSError)


def _data_lines(path: Path):
    """``(line number, text)`` of each data row (after ``@data``; blanks and comments skipped)."""
    try:
        with _open_text(path) as fp:
            in_data = False
            for number, line in enumerate(fp, 1):
                stripped = line.strip()
                if in_data and stripped and not stripped.startswith("%"):
                    yield number, stripped
                elif stripped.lower().startswith("@data"):
                    in_data = True
    except _READ_ERRORS as err:
        raise ValueError(f"{path}: not a readable (UTF-8, gzip) ARFF file: {err}") from err


def _first_data_line(path: Path) -> str:
    return next((text for _, text in _data_lines(path)), "")


def _line_of_row(path: Path, row: int) -> int:
    """The file line of data row ``row`` (0-based), for error messages."""
    for index, (number, _) in enumerate(_data_lines(path)):
        if index == row:
            return number
    return 0


def _label_names_from_xml(path: Path) -> list[str]:
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise ValueError(f"{path}: not a readable MULAN label file ({err})") from err
    labels = [el for el in root.iter() if el.tag.split("}")[-1] == "label"]
    unnamed = [i for i, el in enumerate(labels, 1) if "name" not in el.attrib]
    if unnamed:
        raise ValueError(f"{path}: <label> number {unnamed[0]} has no name attribute")
    if not labels:
        raise ValueError(f"{path}: no <label name=...> elements")
    return [el.attrib["name"] for el in labels]


def _meka_label_count(relation: str) -> int | None:
    match = re.search(r"-C\s+(-?\d+)", relation)
    return int(match.group(1)) if match else None


def _check_arff_options(nominal: str, missing: str) -> None:
    if nominal not in ("onehot", "value"):
        raise ValueError(f"nominal must be 'onehot' or 'value'; got {nominal!r}")
    if missing not in ("raise", "nan"):
        raise ValueError(f"missing must be 'raise' or 'nan'; got {missing!r}")


def _reject_strings(path: Path, attributes: list[tuple[str, object]]) -> None:
    """liac-arff reads STRING attributes, but no matrix can hold them."""
    strings = [name for name, kind in attributes if kind == "STRING"]
    if strings:
        raise ValueError(f"{path}: string attributes cannot be features or labels: {strings[:5]}")


def _header_tabs_as_spaces(lines: Iterator[str]) -> Iterator[str]:
    """The lines, the declarations' tabs read as spaces (Weka's tokenizer takes a tab for
    whitespace; liac-arff fails on ``@attribute<TAB>name<TAB>numeric``)."""
    in_header = True
    for line in lines:
        if in_header and line.lstrip().startswith("@"):
            in_header = not line.lstrip().lower().startswith("@data")
            line = line.replace("\t", " ")
        yield line


def _read_arff(path: Path) -> tuple[dict, bool]:
    """liac-arff's parse of ``path`` (COO data for a sparse file, else rows) and whether the
    file is sparse; its failures become ``ValueError``s naming the file."""
    sparse = _first_data_line(path).startswith("{")
    with needs_extra("experiments", "sparsegen.datasets.load_arff"):
        import arff  # only ARFF needs it: the text sets load without

    try:
        with _open_text(path) as fp:
            data = arff.load(
                _header_tabs_as_spaces(fp), return_type=arff.COO if sparse else arff.DENSE
            )
    except _READ_ERRORS as err:  # (first: UnicodeDecodeError is a ValueError too)
        raise ValueError(f"{path}: not a readable (UTF-8, gzip) ARFF file: {err}") from err
    except (arff.ArffException, ValueError) as err:  # (liac-arff raises both)
        _check_gzip(path)  # gzip checks its CRC at the end: corrupt bytes were parsed first
        raise ValueError(f"{path}: malformed ARFF: {err}") from err
    return data, sparse


def _check_gzip(path: Path) -> None:
    """Raise the unreadable-file error where ``path`` is a corrupt gzip file."""
    if path.suffix.lower() != ".gz":
        return
    try:
        with gzip.open(path, "rb") as fp:
            while fp.read(1 << 20):
                pass
    except _READ_ERRORS as err:
        raise ValueError(f"{path}: not a readable (UTF-8, gzip) ARFF file: {err}") from err


def _sparse_columns(
    path: Path,
    coo: tuple[list, list, list],
    names: list[str],
    label_idx: list[int],
    missing: str,
) -> tuple[sp.csr_matrix, np.ndarray, list[str]]:
    """Split a sparse file's (values, rows, columns) into CSR features, dense labels and the
    feature names."""
    values, rows, cols = coo
    values = _sparse_values(path, values, rows, cols, names, set(label_idx), missing)
    n_rows = _sparse_row_count(path, names)  # rows of {} only count too
    matrix = sp.coo_matrix((values, (rows, cols)), shape=(n_rows, len(names))).tocsr()
    columns = matrix.tocsc()
    Y = columns[:, label_idx].toarray()
    feature_idx = [j for j in range(len(names)) if j not in set(label_idx)]
    X = columns[:, feature_idx].tocsr()
    feature_names = [names[j] for j in feature_idx]
    return X, Y, feature_names


def load_arff(
    path: str | os.PathLike,
    labels: int | Sequence[str] | str | os.PathLike | None = None,
    nominal: str = "onehot",
    missing: str = "raise",
) -> MultilabelData:
    """Read a MULAN or MEKA multi-label ARFF file (dense or sparse; plain or gzipped).

    Parameters
    ----------
    path : path-like
        The ARFF file.
    labels : int, list of str, path to a MULAN ``.xml`` file, or None
        Which attributes are labels: an int ``n`` means the last ``n``
        attributes; a list names them; an XML file is MULAN's label file
        (matched by name, in the XML's order); None reads MEKA's ``-C n`` from
        the ``@relation`` line (``n > 0``: the first ``n`` attributes,
        ``n < 0``: the last ``-n``).
    nominal : {"onehot", "value"}
        How nominal features with values other than {0, 1} become numbers:
        one indicator column per value (``name=value``), or the value itself
        read as a number (its index in the declaration if it is not one), as
        the papers' scripts read them.
    missing : {"raise", "nan"}
        A missing feature value (``?``): a ``ValueError`` naming the file, line
        and attribute, or NaN (in every indicator column of a one-hot nominal
        attribute). A missing label is always an error.

    Returns
    -------
    MultilabelData
        ``X`` is CSR for sparse ARFF, else a float64 array.

    Raises
    ------
    FileNotFoundError, ValueError
        A missing file; a malformed, undecodable or truncated file, a missing
        value, a duplicate sparse index, a string attribute among the features
        (each message names the file and, where there is one, the line and
        attribute); labels that are not in the file or not 0/1.
    """
    path = Path(path)
    _check_arff_options(nominal, missing)
    if not path.is_file():
        raise FileNotFoundError(f"no such ARFF file: {path}")
    data, sparse = _read_arff(path)
    # liac-arff keeps escaped quotes in names (Swainson\'s Thrush); MULAN's XML does not
    attributes = [(re.sub(r"\\(.)", r"\1", name), kind) for name, kind in data["attributes"]]
    names = [name for name, _ in attributes]
    label_idx = _label_indices(path, names, data.get("relation", ""), labels)
    _reject_strings(path, attributes)
    if sparse and _declares_nominal_values(attributes):
        # (an omitted sparse value is a nominal attribute's first declared one, not 0): read
        # as the dense rows the file means, the features kept sparse
        rows = _rows_of_sparse(path, data["data"], attributes, names)
        X, Y, feature_names = _dense_columns(path, rows, attributes, label_idx, nominal, missing)
        X = sp.csr_matrix(X)
    elif sparse:
        X, Y, feature_names = _sparse_columns(path, data["data"], names, label_idx, missing)
    else:
        X, Y, feature_names = _dense_columns(
            path, data["data"], attributes, label_idx, nominal, missing
        )
    if not np.isin(Y, (0, 1)).all():
        raise ValueError(f"{path}: label attributes must hold 0/1 values")
    _check_finite_features(path, X, feature_names, missing)
    return MultilabelData(X, Y.astype(np.int8), feature_names, [names[j] for j in label_idx])


def _check_finite_features(path: Path, X, feature_names: list[str], missing: str) -> None:
    """A feature written as ``nan`` or ``inf`` (which liac-arff reads as numbers): an error
    as a ``?`` is, unless ``missing="nan"`` (then ``nan`` is read as one; ``inf`` never)."""
    data = X.data if sp.issparse(X) else X
    if np.isfinite(data).all() or (missing == "nan" and not np.isinf(data).any()):
        return
    coo = sp.coo_matrix(X)  # (a non-finite entry is a nonzero one)
    first = np.flatnonzero(np.isinf(coo.data) if missing == "nan" else ~np.isfinite(coo.data))[0]
    value = coo.data[first]
    hint = "; use missing='nan' to read NaN features" if np.isnan(value) else ""
    raise ValueError(
        f"{path}, line {_line_of_row(path, int(coo.row[first]))}: feature "
        f"{feature_names[coo.col[first]]!r} is {value}, not a number{hint}"
    )


def _declares_nominal_values(attributes: list[tuple[str, object]]) -> bool:
    """Whether a nominal attribute is declared other than ``{0, 1}`` in that order (whose
    omitted sparse value, its first, is 0)."""
    return any(isinstance(kind, list) and kind != ["0", "1"] for _, kind in attributes)


def _rows_of_sparse(path: Path, coo: tuple[list, list, list], attributes, names) -> list:
    """A sparse file's rows in full, as liac-arff gives dense ones: each omitted value the
    ARFF rules' 0, a nominal attribute's first declared value."""
    defaults = [kind[0] if isinstance(kind, list) else 0.0 for _, kind in attributes]
    rows = [list(defaults) for _ in range(_sparse_row_count(path, names))]
    for value, row, col in zip(*coo, strict=True):
        rows[row][col] = value
    return rows


def _sparse_row_count(path: Path, names: list[str]) -> int:
    """The number of sparse data rows, each checked not to give an attribute twice (an
    error: liac-arff would keep the last value)."""
    count = 0
    for number, text in _data_lines(path):
        count += 1
        seen = set()
        for item in text.strip("{}").split(","):
            if not item.strip():
                continue
            index = item.split(maxsplit=1)[0]
            key = int(index) if index.isdigit() else index  # (2 and 02 are one attribute)
            if key in seen:
                name = names[key] if isinstance(key, int) and key < len(names) else index
                raise ValueError(
                    f"{path}, line {number}: attribute {name!r} (index {key}) appears twice "
                    "in a sparse row"
                )
            seen.add(key)
    return count


def _sparse_values(path, values, rows, cols, names, label_set, missing) -> np.ndarray:
    """The sparse entries as floats; a ``?`` is NaN (``missing="nan"``, features) or an error."""
    gaps = [i for i, v in enumerate(values) if v is None]
    for i in gaps:
        if missing == "raise" or cols[i] in label_set:
            raise _missing_value(path, rows[i], names[cols[i]], cols[i] in label_set)
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _missing_value(path: Path, row: int, name: str, label: bool) -> ValueError:
    """A ``?`` where it may not be: a label's always (no hint helps), a feature's unless
    NaN is asked for."""
    hint = "" if label else "; use missing='nan' to read feature gaps as NaN"
    return ValueError(
        f"{path}, line {_line_of_row(path, row)}: missing value ('?') for {name!r}{hint}"
    )


def _label_indices(path, names, relation, labels) -> list[int]:
    if labels is None:
        n = _meka_label_count(relation)
        if n is None:
            raise ValueError(
                f"{path}: the @relation line has no MEKA '-C n' saying which attributes are "
                "labels: add one (-C n: the first n; -C -n: the last n), put MULAN's .xml of "
                "the label names beside the file, or pass labels= (n or the names) in Python"
            )
        if n == 0 or abs(n) >= len(names):
            raise ValueError(
                f"{path}: the @relation line's '-C {n}' must name between 1 and "
                f"{len(names) - 1} label attributes (the file has {len(names)})"
            )
        return list(range(n)) if n > 0 else list(range(len(names) + n, len(names)))
    if isinstance(labels, int | np.integer) and not isinstance(labels, bool):
        if not 0 < labels < len(names):
            raise ValueError(f"{path}: labels={labels} but the file has {len(names)} attributes")
        return list(range(len(names) - labels, len(names)))
    if isinstance(labels, str | os.PathLike) and str(labels).lower().endswith(".xml"):
        labels = _label_names_from_xml(Path(labels))
    elif isinstance(labels, str):  # one label's name (its characters are no names)
        labels = [labels]
    elif isinstance(labels, bool | bytes | Set | Mapping) or not isinstance(labels, Iterable):
        raise TypeError(  # (a set's order, that of Y's columns, may change from run to run)
            "labels must be a count, names in order (a list, tuple or array) or a MULAN .xml "
            f"path; got {type(labels).__name__}"
        )
    labels = list(labels)  # (a NumPy array or a pandas Index of names too)
    position = {name: j for j, name in enumerate(names)}
    missing = [name for name in labels if name not in position]
    if missing:
        raise ValueError(f"{path}: label attributes not in the file: {missing[:5]}")
    if not labels or len(set(labels)) != len(labels) or len(labels) >= len(names):
        raise ValueError(
            f"{path}: labels must name distinct attributes, at least one and not all of "
            f"the file's {len(names)}; got {labels[:5]}"
        )
    return [position[name] for name in labels]


def _dense_columns(path, rows, attributes, label_idx, nominal, missing):
    table = np.array(rows, dtype=object)
    if table.ndim != 2:
        raise ValueError(f"{path}: no data rows")

    absent = table == None  # noqa: E711 (elementwise on objects: the '?' values)
    label_set = set(label_idx)
    # The first '?' in file order: a label's is always an error, a feature's unless NaN is asked.
    forbidden = (
        absent if missing == "raise" else absent & np.isin(np.arange(len(attributes)), label_idx)
    )
    if forbidden.any():
        row, j = np.argwhere(forbidden)[0]
        raise _missing_value(path, int(row), attributes[j][0], j in label_set)
    for j in label_idx:  # (float('b') would name neither the file nor the label)
        kind = attributes[j][1]
        if isinstance(kind, list) and not all(_is_number(v) for v in kind):
            raise ValueError(
                f"{path}: label {attributes[j][0]!r} takes the values {{{','.join(kind)}}}; "
                "a label is numeric or {0,1}"
            )
    Y = np.array([[float(v) for v in table[:, j]] for j in label_idx]).T
    blocks, feature_names = [], []
    for j, (name, kind) in enumerate(attributes):
        if j in label_set:
            continue
        column, gaps = table[:, j], absent[:, j]
        if isinstance(kind, list) and sorted(kind) != ["0", "1"] and nominal == "onehot":
            for value in kind:  # nominal: one indicator per value
                indicator = (column == value).astype(np.float64)
                indicator[gaps] = np.nan
                blocks.append(indicator)
                feature_names.append(f"{name}={value}")
            continue
        if isinstance(kind, list) and not all(_is_number(v) for v in kind):
            values = [np.nan if v is None else kind.index(v) for v in column]
        else:
            values = [np.nan if v is None else float(v) for v in column]
        blocks.append(np.array(values, dtype=np.float64))
        feature_names.append(name)
    return np.column_stack(blocks), Y, feature_names


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# MULAN's layout: a split's two files and the label names, after the set's name.
_MULAN_FILES = {"train": "-train.arff", "test": "-test.arff", "labels": ".xml"}


def dataset_layout(name: str, data_home: str | os.PathLike | None = None) -> tuple[str, dict]:
    """``(folder name, files)`` of a benchmark: a shipped one (any case), else a MULAN or MEKA
    layout found in the data folder; ``ValueError`` saying what was looked for otherwise."""
    name = checked_name(name, "load_mulan: name")
    directory = data_folder(data_home, DATA_ENV, "multilabel")
    if name.lower() in FETCHED:
        return name.lower(), {"fetched": True}
    if name.lower() in BENCHMARKS:
        return name.lower(), BENCHMARKS[name.lower()]
    for folder_name in dict.fromkeys((name, name.lower())):
        folder, stem = directory / folder_name, folder_name
        mulan = {role: f"{stem}{end}" for role, end in _MULAN_FILES.items()}
        present = {role for role, file in mulan.items() if find_file(folder, file, required=False)}
        if len(present) == len(mulan):
            return folder_name, mulan
        if find_file(folder, f"{stem}.arff", required=False):
            xml = mulan["labels"] if "labels" in present else None
            return folder_name, {"all": f"{stem}.arff", "labels": xml}
        if present:  # a MULAN layout with a file missing: name it
            missing = " and ".join(file for role, file in mulan.items() if role not in present)
            raise ValueError(
                f"{folder}: {missing} not found (MULAN's layout: {', '.join(mulan.values())}, "
                f"plain or gzipped; or MEKA's, one {stem}.arff)"
            )
    raise ValueError(
        f"unknown dataset {name!r}: not shipped ({', '.join(sorted(BENCHMARKS))}), not "
        f"fetched ({', '.join(FETCHED)}) and no "
        f"{directory}/{name}/ holding {name}-train.arff, {name}-test.arff and {name}.xml "
        f"(MULAN's layout) or {name}.arff (MEKA's)"
    )


def load_mulan(
    name: str,
    subset: str = "train",
    data_home: str | os.PathLike | None = None,
    nominal: str = "onehot",
    *,
    return_X_y: bool = False,
) -> MultilabelData | tuple[np.ndarray | sp.csr_matrix, np.ndarray]:
    """A benchmark by name: scene, emotions, birds, cal500, medical, enron, reuters-k500,
    rcv1, or any set laid out like them under ``data_home``.

    Returns a :class:`MultilabelData` (``X``, ``Y``, ``feature_names``,
    ``label_names``), or ``(X, Y)`` with ``return_X_y=True`` as scikit-learn's
    loaders do.

    ``subset`` is ``"train"``, ``"test"`` (the official split) or ``"all"``.
    CAL500 has no official split: only ``"all"``. Reuters-K500's split is
    MEKA's (first 3000 rows train). The data come from ``data_home``, else
    ``$SPARSEGEN_DATA``, else the copies shipped with the package. ``nominal``
    is passed to :func:`load_arff` (it matters for birds' ``location``).
    Names are case-insensitive. Another name is read from
    ``<data_home>/<name>/``: MULAN's layout (``<name>-train.arff``,
    ``<name>-test.arff``, ``<name>.xml``; plain or ``.gz``) or MEKA's single
    file (``<name>.arff`` whose relation names the labels with ``-C n``; no split).
    ``"rcv1"`` is not shipped: it is :func:`fetch_rcv1_multilabel` (CSR features;
    ``data_home`` is then scikit-learn's cache folder).
    """
    _check_subset(subset)
    if return_X_y:
        data = load_mulan(name, subset, data_home, nominal)
        return data.X, data.Y
    name, spec = dataset_layout(name, data_home)
    if spec.get("fetched"):
        return fetch_rcv1_multilabel(subset, data_home)
    folder = data_folder(data_home, DATA_ENV, "multilabel") / name
    labels = find_file(folder, spec["labels"]) if spec["labels"] else None
    if "all" in spec:
        data = load_arff(find_file(folder, spec["all"]), labels, nominal)
        if subset == "all":
            return data
        if "split" not in spec:
            raise ValueError(f"{name} has no official train/test split: use subset='all'")
        rows = slice(0, spec["split"]) if subset == "train" else slice(spec["split"], None)
        return MultilabelData(data.X[rows], data.Y[rows], data.feature_names, data.label_names)
    if subset != "all":
        return load_arff(find_file(folder, spec[subset]), labels, nominal)
    parts = [load_arff(find_file(folder, spec[s]), labels, nominal) for s in ("train", "test")]
    check_same_columns(name, *parts)
    stack = sp.vstack if sp.issparse(parts[0].X) else np.vstack
    X = stack([p.X for p in parts])
    return MultilabelData(
        X.tocsr() if sp.issparse(X) else X,
        np.vstack([p.Y for p in parts]),
        parts[0].feature_names,
        parts[0].label_names,
    )


def _check_subset(subset: str) -> None:
    if subset not in ("train", "test", "all"):
        raise ValueError(f"subset must be 'train', 'test' or 'all'; got {subset!r}")


class DatasetUnavailable(RuntimeError):
    """A dataset that is fetched on first use (RCV1-v2) and could not be: no network."""


def check_same_columns(name: str, train: MultilabelData, test: MultilabelData) -> None:
    """``ValueError`` unless a dataset's train and test files declare the same features and
    labels in the same order: columns are matched by position, so a reordered or
    different file would pair the wrong ones silently."""
    for what, ours, theirs in (
        ("features", train.feature_names, test.feature_names),
        ("labels", train.label_names, test.label_names),
    ):
        if ours != theirs:
            first = next(
                (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                min(len(ours), len(theirs)),
            )
            raise ValueError(
                f"{name}: the train and test files declare different {what} ({len(ours)} and "
                f"{len(theirs)}; the first difference at column {first}): columns are matched "
                "by position"
            )


def fetch_rcv1_multilabel(
    subset: str = "train", data_home: str | os.PathLike | None = None
) -> MultilabelData:
    """RCV1-v2 with its 103 topics (the Reuters set of Martins & Astudillo), via scikit-learn.

    ``subset`` is ``"train"`` (23,149 rows), ``"test"`` (781,265) or ``"all"``:
    Lewis et al.'s LYRL2004 split. ``X`` is CSR (47,236 TF-IDF features,
    about 0.9 GB for the test rows), ``Y`` a dense int8 matrix (103 labels).
    Needs the network on first use (scikit-learn caches it under
    ``data_home``, default ``~/scikit_learn_data``); raises
    :class:`DatasetUnavailable` (a ``RuntimeError``) with a clear message when it cannot
    be fetched.
    """
    from sklearn.datasets import fetch_rcv1

    _check_subset(subset)
    try:
        bunch = fetch_rcv1(subset=subset, data_home=data_home, download_if_missing=True)
    except (OSError, ValueError) as err:  # URLError is an OSError
        raise DatasetUnavailable(
            f"RCV1-v2 could not be fetched ({err}); it needs network access on first use"
        ) from err
    Y = bunch.target.toarray().astype(np.int8)
    return MultilabelData(
        bunch.data.tocsr(),
        Y,
        [f"w{j}" for j in range(bunch.data.shape[1])],
        list(bunch.target_names),
    )


def _laha_label_counts(
    rng: np.random.Generator, setting: str, value: float, n_samples: int, document_length: int
) -> tuple[np.ndarray, int]:
    """Each row's drawn label count (before clipping) and the document length, per ``setting``."""
    least = {"mean": 1, "range": 0, "length": 1}.get(setting)
    if least is None:
        raise ValueError(f"setting must be 'mean', 'range' or 'length'; got {setting!r}")
    if not least <= value < math.inf:  # (NaN too)
        raise ValueError(
            f"make_laha_synthetic: setting={setting!r} needs a finite value ≥ {least}; got {value}"
        )
    if n_samples < 1 or document_length < 1:
        raise ValueError(
            "make_laha_synthetic: n_samples and document_length must be ≥ 1; "
            f"got {n_samples} and {document_length}"
        )
    if setting == "mean":
        counts = rng.integers(int(value) - 1, int(value) + 2, n_samples)
        length = document_length
    elif setting == "range":
        counts = rng.integers(5 - int(value), 5 + int(value) + 1, n_samples)
        length = document_length
    else:  # "length"
        counts = rng.poisson(5, n_samples)
        length = int(value)
    return counts, length


def _poisson_between(rng: np.random.Generator, mean: float, low: int, high: float) -> int:
    """A Poisson draw of ``mean``, redrawn until it lies in ``[low, high]``."""
    while True:
        draw = int(rng.poisson(mean))
        if low <= draw <= high:
            return draw


def _laha_row(rng, p_c, p_w_c, n_labels, length, labels_out) -> np.ndarray:
    """One row of scikit-learn's multi-label generator, from its distributions: a
    label count (Poisson of mean ``n_labels``, between 1 and the number of classes),
    distinct classes drawn by ``p(c)``, a length (Poisson of mean ``length``, at
    least 1) and that many words drawn from the mixture of the classes' ``p(w|c)``.
    Writes the labels into ``labels_out``; returns the word counts."""
    n_classes = len(p_c)
    size = _poisson_between(rng, n_labels, 1, n_classes)
    # successive draws by p(c) among the classes not yet drawn: scikit-learn's
    # redraw-until-distinct, in one call
    labels = rng.choice(n_classes, size=size, replace=False, p=p_c)
    labels_out[labels] = 1
    mixture = p_w_c[:, labels].sum(axis=1)
    return rng.multinomial(_poisson_between(rng, length, 1, math.inf), mixture / mixture.sum())


def make_laha_synthetic(
    setting: str,
    value: float,
    n_samples: int = 1200,
    n_features: int = 20,
    n_classes: int = 10,
    document_length: int = 2000,
    random_state: int | None = 0,
) -> MultilabelData:
    """Laha et al.'s synthetic multi-label sets (their Sec. 5.1.1), from scikit-learn's generator.

    The number of labels ``N`` of each row is drawn as the paper says:

    * ``setting="mean"``: ``N`` uniform on ``{μ−1, μ, μ+1}`` with ``μ = value``
      (2…9), document length ``document_length``;
    * ``setting="range"``: ``N`` uniform on ``{5−r, …, 5+r}`` with ``r = value``;
    * ``setting="length"``: ``N ~ Poisson(5)``, document length ``value`` (200…2000).

    Every row is drawn from one generative model, scikit-learn's: class priors
    ``p(c)`` and word distributions ``p(w|c)`` drawn once per data set
    (``make_multilabel_classification(return_distributions=True)``), then each
    row sampled as that generator samples (:func:`_laha_row`), with its own ``N``.
    As in scikit-learn, ``N`` and the document length are the means of the Poisson
    draws made per row, and unlabelled rows are redrawn.
    """
    from sklearn.datasets import make_multilabel_classification

    rng = np.random.default_rng(random_state)
    counts, length = _laha_label_counts(rng, setting, value, n_samples, document_length)
    counts = np.clip(counts, 1, n_classes)
    # scikit-learn's generator takes one label mean per call, and each call draws its own
    # distributions: a call per drawn N would mix as many unrelated tasks as there are N.
    *_, p_c, p_w_c = make_multilabel_classification(
        n_samples=1,
        n_features=n_features,
        n_classes=n_classes,
        random_state=int(rng.integers(2**31 - 1)),
        return_distributions=True,
    )
    X = np.empty((n_samples, n_features))
    Y = np.zeros((n_samples, n_classes), dtype=np.int8)
    for i, n_labels in enumerate(counts):
        X[i] = _laha_row(rng, p_c, p_w_c, n_labels, length, Y[i])
    return MultilabelData(
        X,
        Y,
        [f"x{j}" for j in range(n_features)],
        [f"label{j}" for j in range(n_classes)],
    )
