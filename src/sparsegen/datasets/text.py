"""Text data for the attention experiments: parallel corpora and NLI pairs.

Shipped with the package (gzipped, with their sources, licences and citations in
``sparsegen/data/text/README.md``): Multi30k task 1 French–English
(:func:`load_multi30k`), SNLI 1.0 dev/test and MultiNLI 1.0 dev
(:func:`load_nli`). Any other corpus is read from files: aligned parallel text
(:func:`read_parallel`), SNLI/MultiNLI in their ``.jsonl``, ``.txt`` or
``.csv`` forms (:func:`read_nli`), Tatoeba's ``English<TAB>French`` pairs
(:func:`read_tatoeba`). Gzipped files are read transparently.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparsegen.datasets._files import checked_name, data_folder, find_file

__all__ = [
    "MULTI30K_SPLITS",
    "NLISPLITS",
    "NLI_LABELS",
    "NLIData",
    "ParallelData",
    "load_multi30k",
    "load_nli",
    "read_nli",
    "read_parallel",
    "read_tatoeba",
    "split_by_group",
]

TEXT_ENV = "SPARSEGEN_TEXT_DATA"
NLI_LABELS = ("entailment", "neutral", "contradiction")
"""The NLI classes, in the order of :attr:`NLIData.labels`' indices."""
MULTI30K_SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr")
"""The Multi30k splits :func:`load_multi30k` reads (all shipped)."""
NLISPLITS = {
    "snli": {"dev": "snli_1.0_dev", "test": "snli_1.0_test"},
    "multinli": {
        "dev_matched": "multinli_1.0_dev_matched",
        "dev_mismatched": "multinli_1.0_dev_mismatched",
    },
}
"""The shipped NLI splits :func:`load_nli` reads, by corpus (SNLI's training file is not
shipped: :func:`read_nli` reads it from its path)."""


@dataclass
class ParallelData:
    """Aligned sentence pairs, with what was dropped on reading."""

    source: list[str]
    target: list[str]
    empty_dropped: int = 0  # pairs where either side was an empty line


@dataclass
class NLIData:
    """Premise/hypothesis pairs with labels as indices into :data:`NLI_LABELS`."""

    premises: list[str]
    hypotheses: list[str]
    labels: np.ndarray
    pair_ids: list[str]
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Sequence[int] | np.ndarray) -> NLIData:
        index = np.asarray(index, dtype=int)
        return NLIData(
            [self.premises[i] for i in index],
            [self.hypotheses[i] for i in index],
            self.labels[index],
            [self.pair_ids[i] for i in index],
            dict(self.dropped),
        )

    @staticmethod
    def concatenate(parts: Sequence[NLIData]) -> NLIData:
        dropped: dict[str, int] = {}
        for part in parts:
            for reason, count in part.dropped.items():
                dropped[reason] = dropped.get(reason, 0) + count
        return NLIData(
            [p for part in parts for p in part.premises],
            [h for part in parts for h in part.hypotheses],
            np.concatenate([part.labels for part in parts]),
            [i for part in parts for i in part.pair_ids],
            dropped,
        )


def text_lines(path: Path, quoted_fields: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, text without its newline or a leading byte-order mark) of a UTF-8 text
    file, plain or gzipped (``.gz``). ``ValueError`` names file and line for bytes that are
    not UTF-8, a damaged gzip file, and a line holding a carriage return (a file of old Mac
    line ends would read as one line), but in CSV (``quoted_fields``), whose reader tells a
    quoted one from a stray one."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    number = 0
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                # a BOM opens each file of a concatenation, not just the first line
                line = raw.decode("utf-8").removeprefix("\ufeff").rstrip("\r\n")
                if "\r" in line and not quoted_fields:
                    raise ValueError(
                        f"{path}, line {number}: a carriage return (\\r) inside a line (old Mac "
                        "line ends?); use \\n or \\r\\n"
                    )
                yield number, line
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}, line {number}: not UTF-8 text ({error.reason})") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(f"{path}, line {number + 1}: not a readable gzip file ({error})") from None


def _without_empty(pairs: Sequence[tuple[str, str]]) -> ParallelData:
    """The pairs with both sides non-blank (stripped), counting the others as dropped."""
    kept = [(s.strip(), t.strip()) for s, t in pairs]
    kept = [(s, t) for s, t in kept if s and t]
    return ParallelData(
        [s for s, _ in kept], [t for _, t in kept], empty_dropped=len(pairs) - len(kept)
    )


def read_parallel(source: str | os.PathLike, target: str | os.PathLike) -> ParallelData:
    """Aligned sentence pairs from two files, line *i* of one translating line *i* of the other.

    Pairs with an empty (or whitespace-only) side are dropped and counted in
    ``empty_dropped``. Files with different line counts, or with no pair left, raise
    ``ValueError`` naming both files.
    """
    source, target = Path(source), Path(target)
    left = [text for _, text in text_lines(source)]
    right = [text for _, text in text_lines(target)]
    if len(left) != len(right):
        raise ValueError(
            f"parallel files differ in length: {source} has {len(left)} lines, "
            f"{target} has {len(right)}; line i of one must translate line i of the other"
        )
    pairs = _without_empty(list(zip(left, right, strict=True)))
    if not pairs.source:
        raise ValueError(
            f"{source} / {target}: no sentence pair ({pairs.empty_dropped} with a blank side "
            "dropped)"
        )
    return pairs


def load_multi30k(
    split: str = "train",
    *,
    source: str = "fr",
    target: str = "en",
    data_home: str | os.PathLike | None = None,
) -> ParallelData:
    """Multi30k task 1 (Elliott et al. 2016, 2017): English–French image captions.

    Parameters
    ----------
    split : {"train", "val", "test_2016_flickr", "test_2017_flickr"}
        29,000 / 1,014 / 1,000 / 1,000 pairs.
    source, target : {"fr", "en"}
        The direction.
    data_home : path, optional
        A folder holding ``multi30k-fr-en/<split>.<lang>[.gz]`` (default: the
        copy shipped with the package, or ``$SPARSEGEN_TEXT_DATA``).
    """
    if split not in MULTI30K_SPLITS:
        raise ValueError(f"unknown Multi30k split {split!r}; choose one of {MULTI30K_SPLITS}")
    if {source, target} != {"fr", "en"}:
        raise ValueError(f"source and target must be 'fr' and 'en'; got {source!r}, {target!r}")
    folder = data_folder(data_home, TEXT_ENV, "text") / "multi30k-fr-en"
    return read_parallel(
        find_file(folder, f"{split}.{source}"), find_file(folder, f"{split}.{target}")
    )


def read_tatoeba(path: str | os.PathLike) -> ParallelData:
    """Tatoeba/Anki pairs, ``English<TAB>French[<TAB>attribution]`` per line (source = English).

    Pairs with an empty (or whitespace-only) side, blank lines included, are
    dropped and counted in ``empty_dropped``, as in :func:`read_parallel` (a file left
    with no pair raises ``ValueError``); a
    non-blank line without a tab raises ``ValueError`` naming file and line.
    Split it with :func:`split_by_group` on the English side, so that a
    sentence with several translations never lands in two splits.
    """
    path = Path(path)
    pairs = []
    for number, line in text_lines(path):
        fields = line.split("\t")
        if len(fields) < 2 and line.strip():
            raise ValueError(f"{path}, line {number}: expected English<TAB>French; got {line!r}")
        pairs.append((fields[0], fields[1] if len(fields) > 1 else ""))
    data = _without_empty(pairs)
    if not data.source:
        raise ValueError(f"{path}: no sentence pair ({data.empty_dropped} with a blank side)")
    return data


def split_by_group(
    groups: Sequence[str], fractions: Sequence[float], seed: int = 0
) -> list[np.ndarray]:
    """Indices split by group (e.g. the English sentence): no group spans two parts.

    ``fractions`` (non-negative, summing to at most 1) are the parts' shares of the
    groups; fractions that sum to 1 (to rounding: 0.7 + 0.2 + 0.1) leave no group out.
    """
    shares = np.asarray(fractions, dtype=np.float64)
    keys = np.asarray(groups, dtype=object)
    if isinstance(groups, str) or keys.ndim != 1 or shares.ndim != 1:
        raise ValueError(
            "split_by_group: groups (one per item) and fractions (one per part) must be "
            f"1-D sequences; got {type(groups).__name__} of shape {keys.shape} and "
            f"{type(fractions).__name__} of shape {shares.shape}"
        )
    total = float(shares.sum())
    if (shares < 0).any() or not np.isfinite(shares).all() or total > 1 + 1e-9:
        raise ValueError(
            f"split_by_group: fractions must be non-negative and sum to at most 1; got "
            f"{list(fractions)}"
        )
    try:
        names, inverse = np.unique(keys, return_inverse=True)
    except TypeError:  # (the sort np.unique takes: "'<' not supported between 'int' and 'str'")
        kinds = sorted({type(key).__name__ for key in keys})
        raise TypeError(
            f"split_by_group: groups must be of one kind that sorts (all strings, or all "
            f"numbers); got {', '.join(kinds)}"
        ) from None
    order = np.random.default_rng(seed).permutation(len(names))
    # (a nudge past the sums' rounding: 0.7 + 0.2 is 0.8999999999999999, whose floor at 100
    # groups would take one from the next part, and the last bound of a sum to 1 one from all)
    bounds = np.floor(np.cumsum([0.0, *shares]) * len(names) + 1e-6).astype(int)
    part_of_group = np.full(len(names), -1)
    for part, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        part_of_group[order[lo:hi]] = part
    return [np.flatnonzero(part_of_group[inverse] == part) for part in range(len(fractions))]


def _nli_records(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {pairID, sentence1, sentence2, label}) from .csv, .jsonl or .txt."""
    kind = path.name.lower().removesuffix(".gz").rsplit(".", 1)[-1]
    if kind == "jsonl":
        for number, line in text_lines(path):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not JSON ({error.msg})") from None
            except RecursionError:  # (a line of thousands of nested brackets)
                raise ValueError(f"{path}, line {number}: JSON nested too deeply") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {number}: expected a JSON object")
            yield (
                number,
                {
                    "pairID": str(record.get("pairID", number)),
                    "sentence1": record.get("sentence1"),
                    "sentence2": record.get("sentence2"),
                    "label": record.get("gold_label", record.get("label")),
                },
            )
        return
    if kind not in ("csv", "txt", "tsv"):
        raise ValueError(f"{path}: unknown NLI format; expected .jsonl, .txt/.tsv or .csv")
    rows = _table_rows(path, kind)
    if not rows:
        return
    _, header = rows[0]
    # the official release's gold_label first, as in its .jsonl twin
    label_column = "gold_label" if "gold_label" in header else "label"
    needed = ("sentence1", "sentence2", label_column)
    missing = [name for name in needed if name not in header]
    if missing:
        missing[-1:] = ["label (or gold_label)"] if missing[-1] == "label" else missing[-1:]
        raise ValueError(f"{path}, line 1: the header lacks {', '.join(missing)}; got {header}")
    where = {name: header.index(name) for name in (*needed, "pairID") if name in header}
    for number, row in rows[1:]:
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(
                f"{path}, line {number}: {len(row)} fields where the header has {len(header)}"
            )
        yield (
            number,
            {
                "pairID": row[where["pairID"]] if "pairID" in where else str(number),
                "sentence1": row[where["sentence1"]],
                "sentence2": row[where["sentence2"]],
                "label": row[where[label_column]],
            },
        )


def _one_line_rows(rows, path: Path):
    """``(line number, fields)`` of each row, which must end on its own line: a quote left
    open would otherwise take the rows after it into its field, silently."""
    end = 0
    for row in rows:
        start, end = end + 1, rows.line_num
        if end > start:
            raise ValueError(
                f"{path}, line {start}: a quoted field runs on to line {end} (a quote left "
                "open?); a row is one line"
            )
        yield end, row


def _table_rows(path: Path, kind: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a ``.csv`` or tab-separated file, fields of any length."""
    lines = [line for _, line in text_lines(path, quoted_fields=True)]
    text = "\n".join(lines)
    rows = csv.reader(
        io.StringIO(text),
        delimiter="," if kind == "csv" else "\t",
        quoting=(csv.QUOTE_MINIMAL if kind == "csv" else csv.QUOTE_NONE),
    )
    # csv's default cap (131,072 characters) would reject a long but valid field; no field
    # can be longer than the whole text. The cap is process-wide, hence restored.
    limit = csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    try:
        return list(_one_line_rows(rows, path))
    except csv.Error as error:
        number = rows.line_num
        if "\r" in lines[number - 1]:  # csv takes a bare \r for the end of the row
            problem = "a carriage return (\\r) inside an unquoted field; remove it"
            problem += " or quote the field" if kind == "csv" else ""
        else:
            problem = f"malformed {kind} row ({error})"
        raise ValueError(f"{path}, line {number}: {problem}") from None
    finally:
        csv.field_size_limit(limit)


def read_nli(path: str | os.PathLike) -> NLIData:
    """SNLI/MultiNLI pairs from a ``.jsonl`` (the official release), ``.txt`` (its
    tab-separated twin) or ``.csv`` (``pairID,sentence1,sentence2,label``) file (the
    extension in any case, gzipped or not); the label is ``gold_label`` where a file has
    it, else ``label``.

    Pairs labelled ``-`` (no annotator consensus) and pairs with an empty
    premise or hypothesis are dropped and counted in ``dropped`` (a file left with no
    pair raises ``ValueError``); any other
    label than :data:`NLI_LABELS` raises ``ValueError`` naming file, line and
    the allowed labels, as does a malformed row. In ``.csv``/``.txt`` files a
    field may be of any length (beyond the ``csv`` module's default cap), but
    a carriage return (``\\r``) inside an unquoted field raises ``ValueError``
    naming file and line: ``csv`` would end the row there, so quote the field
    (``.csv``) or remove the ``\\r``.
    """
    path = Path(path)
    premises, hypotheses, labels, ids = [], [], [], []
    dropped = {"no gold label": 0, "empty sentence": 0}
    for number, record in _nli_records(path):
        label = record["label"]
        if label == "-":
            dropped["no gold label"] += 1
            continue
        if label not in NLI_LABELS:
            raise ValueError(
                f"{path}, line {number}: unknown label {label!r}; expected one of "
                f"{', '.join(NLI_LABELS)} (or '-' for no gold label, dropped)"
            )
        premise, hypothesis = record["sentence1"], record["sentence2"]
        if not isinstance(premise, str) or not isinstance(hypothesis, str):
            raise ValueError(f"{path}, line {number}: sentence1 and sentence2 must be text")
        if not premise.strip() or not hypothesis.strip():
            dropped["empty sentence"] += 1
            continue
        premises.append(premise.strip())
        hypotheses.append(hypothesis.strip())
        labels.append(NLI_LABELS.index(label))
        ids.append(record["pairID"])
    if not premises:  # (an empty file, a header alone: a run on no data, as read_parallel says)
        raise ValueError(
            f"{path}: no labelled pair ({dropped['no gold label']} without a gold label and "
            f"{dropped['empty sentence']} with an empty sentence dropped)"
        )
    return NLIData(premises, hypotheses, np.asarray(labels, dtype=np.int64), ids, dropped)


def load_nli(
    name: str = "snli", split: str = "test", *, data_home: str | os.PathLike | None = None
) -> NLIData:
    """The shipped NLI sets: SNLI 1.0 ``dev``/``test`` (Bowman et al. 2015) and MultiNLI 1.0
    ``dev_matched``/``dev_mismatched`` (Williams et al. 2018). Their training sets are not
    shipped; read one with :func:`read_nli`."""
    key = checked_name(name, "load_nli: name").lower()
    if key not in NLISPLITS or split not in NLISPLITS[key]:
        known = "; ".join(f"{n}: {', '.join(s)}" for n, s in NLISPLITS.items())
        raise ValueError(f"unknown NLI set {name!r}/{split!r}; shipped: {known}")
    folder = data_folder(data_home, TEXT_ENV, "text") / key
    return read_nli(find_file(folder, NLISPLITS[key][split] + ".csv"))
