"""The papers' multi-label metrics on 0/1 indicator matrices (scikit-learn's where it has them).

``hamming_loss`` is scikit-learn's ``sklearn.metrics.hamming_loss``, re-exported: the
fraction of (row, label) pairs predicted wrong.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
from numpy.typing import ArrayLike

from sparsegen._extras import needs_extra

with needs_extra("sklearn", __name__):
    import scipy.sparse as sp
    from scipy.spatial.distance import jensenshannon
    from sklearn.metrics import f1_score, hamming_loss, precision_score, recall_score

__all__ = [
    "f1_from_confusion",
    "hamming_loss",
    "jensen_shannon_divergence",
    "macro_f1",
    "macro_f1_harmonic",
    "micro_f1",
]


def _indicators(Y_true: ArrayLike, Y_pred: ArrayLike, fn: str) -> tuple:
    """Both as 2-D indicator matrices (scipy.sparse ones as they are): scikit-learn would
    read a 1-D array as one binary or multi-class label, another F1 than that of a row."""
    pair = tuple(Y if sp.issparse(Y) else np.asarray(Y) for Y in (Y_true, Y_pred))
    for name, Y in zip(("Y_true", "Y_pred"), pair, strict=True):
        if Y.ndim != 2:
            raise ValueError(
                f"{fn}: {name} must be a 2-D 0/1 indicator matrix (rows, labels); got shape "
                f"{Y.shape} (one row of labels is a matrix of one row)"
            )
    return pair


def micro_f1(Y_true: ArrayLike, Y_pred: ArrayLike) -> float:
    """``2PR/(P+R)`` over all (row, label) pairs."""
    Y_true, Y_pred = _indicators(Y_true, Y_pred, "micro_f1")
    return float(f1_score(Y_true, Y_pred, average="micro", zero_division=0))


def macro_f1(Y_true: ArrayLike, Y_pred: ArrayLike) -> float:
    """scikit-learn's macro-F1: the mean over labels of each label's F1 (0 where undefined)."""
    Y_true, Y_pred = _indicators(Y_true, Y_pred, "macro_f1")
    return float(f1_score(Y_true, Y_pred, average="macro", zero_division=0))


def macro_f1_harmonic(Y_true: ArrayLike, Y_pred: ArrayLike) -> float:
    """Martins & Astudillo's macro-F1: the harmonic mean of macro-precision and macro-recall.

    Per-label precision and recall are averaged over labels (0 where undefined),
    then combined as ``2PR/(P+R)``. This is the number their Table 2 reports.
    """
    Y_true, Y_pred = _indicators(Y_true, Y_pred, "macro_f1_harmonic")
    p = precision_score(Y_true, Y_pred, average="macro", zero_division=0)
    r = recall_score(Y_true, Y_pred, average="macro", zero_division=0)
    return float(2 * p * r / (p + r)) if p + r > 0 else 0.0


def f1_from_confusion(confusion: np.ndarray) -> tuple[float, float]:
    """``(micro_f1, macro_f1_harmonic)`` from per-label confusion matrices.

    ``confusion`` has :func:`sklearn.metrics.multilabel_confusion_matrix`'s
    layout, shape ``(n_labels, 2, 2)`` holding ``[[tn, fp], [fn, tp]]``. Counts
    add up over rows, so a test set too large to predict at once is scored
    from the sum of its chunks' matrices; the values equal :func:`micro_f1`
    and :func:`macro_f1_harmonic` on the whole set (0 where undefined; with no
    labels, ``(0.0, 0.0)``). Another shape, or a count that is negative or not
    finite, is a ``ValueError``.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    if confusion.ndim != 3 or confusion.shape[1:] != (2, 2):
        raise ValueError(
            "f1_from_confusion: confusion must have shape (n_labels, 2, 2), as "
            f"sklearn.metrics.multilabel_confusion_matrix gives; got {confusion.shape}"
        )
    if not (np.isfinite(confusion).all() and (confusion >= 0).all()):
        raise ValueError(
            "f1_from_confusion: confusion must hold counts, finite and >= 0 (a negative "
            "count gives an F1 above 1, a NaN one 0)"
        )
    if not len(confusion):
        return 0.0, 0.0  # no label: every ratio is undefined (the mean of none warns)
    tp, fp, fn = confusion[:, 1, 1], confusion[:, 0, 1], confusion[:, 1, 0]
    found = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = 2 * tp.sum() / found if found > 0 else 0.0
    p = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0).mean()
    r = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0).mean()
    macro = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return float(micro), float(macro)


def jensen_shannon_divergence(P: ArrayLike, Q: ArrayLike, base: float = 2.0) -> float:
    """Mean over rows of ``JS(p_i ‖ q_i)`` (not its square root), rows normalised to sum to 1.

    Rows of ``P`` are target distributions (e.g. ``y/‖y‖₁``), rows of ``Q``
    predicted ones; a row of zeros counts as the uniform distribution. Dense arrays
    or scipy.sparse matrices. No rows is a ``ValueError``, as for the F1 metrics here
    (scikit-learn's), not a mean of nothing. ``base``, the logarithm's, is a finite
    number > 0 other than 1 (2: the divergence lies in [0, 1]).
    """
    if not isinstance(base, Real) or isinstance(base, bool):
        raise TypeError(f"jensen_shannon_divergence: base must be a number; got {base!r}")
    if not (0 < base < math.inf and base != 1):  # (0 would give 0.0, a perfect match; 1 inf)
        raise ValueError(
            f"jensen_shannon_divergence: base must be a finite number > 0 other than 1; got {base}"
        )
    P = _rows_as_distributions(P, "P")
    Q = _rows_as_distributions(Q, "Q")
    if P.shape != Q.shape:
        raise ValueError(
            f"jensen_shannon_divergence: P and Q must have one shape; got {P.shape} and {Q.shape}"
        )
    if not len(P):
        raise ValueError("jensen_shannon_divergence: P and Q have no rows; the mean needs one")
    return float(np.mean(jensenshannon(P, Q, axis=1, base=base) ** 2))


def _rows_as_distributions(M, name: str) -> np.ndarray:
    """``(rows, K ≥ 1)`` finite non-negative weights, each row divided by its sum (by its
    maximum first: a sum of huge weights would overflow); a row of zeros uniform."""
    M = M.toarray() if sp.issparse(M) else M  # (np.asarray would make a 0-d object array)
    M = np.asarray(M, dtype=np.float64)
    if M.ndim != 2 or M.shape[1] == 0:
        raise ValueError(
            f"jensen_shannon_divergence: {name} must be 2-D, (rows, classes ≥ 1); "
            f"got shape {M.shape}"
        )
    if not np.isfinite(M).all() or (M < 0).any():
        raise ValueError(
            f"jensen_shannon_divergence: {name} must hold finite non-negative weights "
            "(a NaN, an infinity or a negative weight is no distribution)"
        )
    top = M.max(1, keepdims=True)
    M = M / np.where(top > 0, top, 1)
    total = M.sum(1, keepdims=True)
    return np.where(total > 0, M / np.where(total > 0, total, 1), 1.0 / M.shape[1])
