"""Linear multi-label classifiers trained with the papers' losses (scikit-learn API)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral, Real
from typing import TYPE_CHECKING

import numpy as np
import torch

from sparsegen import losses
from sparsegen._extras import needs_extra
from sparsegen._projection import cone_scale
from sparsegen.functional import sparsegen_lin, sparsehourglass

with needs_extra("sklearn", __name__):
    import scipy.sparse as sp
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit, softmax
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state
    from sklearn.utils.metaestimators import available_if
    from sklearn.utils.multiclass import check_classification_targets, type_of_target
    from sklearn.utils.validation import check_is_fitted, check_scalar, validate_data

if TYPE_CHECKING:  # (scipy.sparse.sparray is SciPy 1.11's: only a type checker reads it)
    from numpy.typing import ArrayLike

    # the features: an array (or what NumPy makes one of) or a SciPy sparse matrix
    Matrix = ArrayLike | sp.spmatrix | sp.sparray

__all__ = ["LOSSES", "LinearMultilabelClassifier"]


# ---- the loss table: everything a loss changes in the estimator ----


def _no_kwargs(estimator: LinearMultilabelClassifier) -> dict[str, float]:
    return {}


def _map_sigmoid(z: np.ndarray, estimator: LinearMultilabelClassifier) -> np.ndarray:
    return expit(z)


def _map_softmax(z: np.ndarray, estimator: LinearMultilabelClassifier) -> np.ndarray:
    return torch.softmax(torch.from_numpy(z), -1).numpy()


def _map_sparsegen_lin(z: np.ndarray, estimator: LinearMultilabelClassifier) -> np.ndarray:
    return sparsegen_lin(z, lam=estimator.lam)


def _map_sparsehourglass(z: np.ndarray, estimator: LinearMultilabelClassifier) -> np.ndarray:
    return sparsehourglass(z, q=estimator.q)


def _score_difference(z: np.ndarray, estimator: LinearMultilabelClassifier) -> np.ndarray:
    """``z₁ − z₀``: the two-class distribution of a translation-invariant mapping (or σ)
    is a monotone function of it."""
    return z[:, 1] - z[:, 0]


def _hourglass_score_difference(z: np.ndarray, estimator: LinearMultilabelClassifier) -> np.ndarray:
    """``α̂(z)(z₁ − z₀)``, ``α̂ = (1 + 2q)/(|z₀ + z₁| + 2q)``: sparsehourglass's
    probability of class 1 is ``clip((α̂(z)(z₁ − z₀) + 1)/2, 0, 1)``, monotone in it
    (``z₁ − z₀`` alone can rank rows otherwise: the mapping is not translation invariant)."""
    # the mapping's own α̂: the limit 1 where 2q is huge or inf (sparsemax)
    scores = torch.from_numpy(z)
    alpha = cone_scale(scores[:, 0] + scores[:, 1], 2, float(estimator.q), mirror=True)
    return (alpha * (scores[:, 1] - scores[:, 0])).numpy()


def _above(p: np.ndarray, threshold: float) -> np.ndarray:
    return (p > threshold).astype(np.int64)


def _above_half(p: np.ndarray, threshold: float | None) -> np.ndarray:
    """Labels whose own probability exceeds ``threshold`` (default 0.5)."""
    return _above(p, 0.5 if threshold is None else threshold)


def _above_uniform(p: np.ndarray, threshold: float | None) -> np.ndarray:
    """Labels whose share of the distribution exceeds ``threshold`` (default ``1/K``)."""
    return _above(p, 1.0 / p.shape[1] if threshold is None else threshold)


def _support(p: np.ndarray, threshold: float | None) -> np.ndarray:
    """The labels a sparse mapping gives mass to; ``threshold`` does not apply."""
    return _above(p, 0)


@dataclass(frozen=True)
class _LossSpec:
    """What one ``loss=`` name means to :class:`LinearMultilabelClassifier`.

    Attributes
    ----------
    function
        The training loss from :mod:`sparsegen.losses`, called on the scores and
        the 0/1 label matrix.
    mapping
        ``(scores, estimator) -> p``, row-wise: the loss's distribution over labels,
        or with ``per_label_probabilities`` each label's own probability.
    rule
        ``(p, estimator.threshold) -> 0/1 label matrix``: the multi-label prediction
        rule (:func:`_above_half`, :func:`_above_uniform` or :func:`_support`).
    kwargs
        The estimator -> the loss's keyword arguments (e.g. ``{"lam": est.lam}``);
        none by default.
    per_label_probabilities
        ``mapping`` gives each label's probability of being in the set, not a
        distribution: ``predict_distribution`` normalises its rows, and
        ``predict_proba`` exists after a multi-label fit.
    needs_target_distribution
        The loss compares ``p`` with ``y/‖y‖₁``, which a row without labels lacks:
        ``fit`` drops such rows, with a warning.
    random_start
        L-BFGS starts from a tiny random ``W`` instead of 0, where every score ties
        (a kink of the hinge losses from which L-BFGS finds no descent direction).
    binary_score
        ``(scores, estimator) -> (n,)``: a two-class fit's ``decision_function``, a
        score that ranks rows as the mapping's probability of ``classes_[1]`` does.
    """

    function: Callable[..., torch.Tensor]
    mapping: Callable[[np.ndarray, LinearMultilabelClassifier], np.ndarray]
    rule: Callable[[np.ndarray, float | None], np.ndarray]
    kwargs: Callable[[LinearMultilabelClassifier], dict[str, float]] = _no_kwargs
    per_label_probabilities: bool = False
    needs_target_distribution: bool = True
    random_start: bool = False
    binary_score: Callable[[np.ndarray, LinearMultilabelClassifier], np.ndarray] = _score_difference


# sparsemax and the sparsemax and sparsegen-lin hinges predict with sparsegen_lin(z, lam) at the
# estimator's lam, whatever lam they train at: Martins & Astudillo's sparsemax(s z) rule.
_LOSSES: dict[str, _LossSpec] = {
    "logistic": _LossSpec(
        losses.logistic_loss,
        _map_sigmoid,
        _above_half,
        per_label_probabilities=True,
        needs_target_distribution=False,
    ),
    "softmax": _LossSpec(losses.softmax_loss, _map_softmax, _above_uniform),
    "sparsemax": _LossSpec(losses.sparsemax_loss, _map_sparsegen_lin, _support),
    "sparsemax_hinge": _LossSpec(
        losses.sparsegen_lin_hinge_loss,
        _map_sparsegen_lin,
        _support,
        kwargs=lambda estimator: {"lam": 0.0},
        random_start=True,
    ),
    "sparsegen_lin_hinge": _LossSpec(
        losses.sparsegen_lin_hinge_loss,
        _map_sparsegen_lin,
        _support,
        kwargs=lambda estimator: {"lam": estimator.lam},
        random_start=True,
    ),
    "sparsehourglass_hinge": _LossSpec(
        losses.sparsehourglass_hinge_loss,
        _map_sparsehourglass,
        _support,
        kwargs=lambda estimator: {"q": estimator.q},
        random_start=True,
        binary_score=_hourglass_score_difference,
    ),
}

# The valid ``loss=`` names.
LOSSES: tuple[str, ...] = tuple(_LOSSES)
"""The names :class:`LinearMultilabelClassifier` takes as ``loss=``."""


# What fit sets: all of it, or none of it.
_FITTED = (
    "classes_",
    "coef_",
    "intercept_",
    "n_iter_",
    "n_features_in_",
    "feature_names_in_",
    "_multilabel",
)


class LinearMultilabelClassifier(ClassifierMixin, BaseEstimator):
    r"""Linear multi-label classifier ``z = W x + b`` trained with one of the papers' losses.

    The objective is the mean loss over rows plus ``(alpha / 2) ‖W‖²``, the
    intercept unpenalised (Martins & Astudillo's convention), minimised by
    L-BFGS (``scipy.optimize``, memory ``memory``, at most ``max_iter``
    iterations) from ``W = 0`` (the hinge losses: see ``random_state``). Each
    iteration costs two products with ``X``
    (dense or scipy.sparse); the loss and its gradient come from
    :mod:`sparsegen.losses`.

    Parameters
    ----------
    loss : {"logistic", "softmax", "sparsemax", "sparsemax_hinge", \
            "sparsegen_lin_hinge", "sparsehourglass_hinge"}
        ``"logistic"``: K independent binary logistic losses. ``"softmax"``:
        KL to ``y/‖y‖₁``. ``"sparsemax"``: the sparsemax loss (Laha et al.'s
        "sparsemax+huber"). ``"sparsemax_hinge"``: Eq. 8 at λ = 0.
        ``"sparsegen_lin_hinge"``: Eq. 8 at ``lam``. ``"sparsehourglass_hinge"``:
        Eq. 7 at ``q``.
    alpha : float, default=1e-3
        L2 penalty on ``W``.
    threshold : float or None, default=None
        Prediction rule of ``"logistic"`` (labels with ``σ(z_j) > threshold``,
        default 0.5) and ``"softmax"`` (labels with ``softmax(z)_j > threshold``,
        default ``1/K``); any number but NaN (at 1 or above no label is predicted, below
        0 every label), and may be changed after ``fit`` (``set_params``).
    lam : float, default=0.0
        The sparse losses predict the support of ``sparsegen_lin(z, lam)``
        (Martins & Astudillo's ``sparsemax(s z)`` is ``lam = 1 − 1/s``);
        ``"sparsegen_lin_hinge"`` also trains with it. ``lam < 1``.
    q : float, default=1.0
        ``"sparsehourglass_hinge"`` trains with and predicts the support of
        ``sparsehourglass(z, q)``. ``q > 0``.
    fit_intercept : bool, default=True
    max_iter : int, default=100
    memory : int, default=10
        L-BFGS history size.
    tol : float, default=1e-6
        L-BFGS projected-gradient tolerance.
    random_state : int, RandomState or None, default=None
        The hinge losses start from a tiny random ``W`` (scale 1e-3) drawn from
        it: at ``W = 0`` all scores tie, a kink where L-BFGS finds no descent
        direction. Pass an int for repeatable hinge fits (the experiments pass
        0). The smooth losses start from ``W = 0`` and ignore it.

    Attributes
    ----------
    coef_ : ndarray of shape (n_labels, n_features)
    intercept_ : ndarray of shape (n_labels,)
    classes_ : ndarray
        The labels: ``arange(n_labels)`` for a 0/1 label matrix, the class
        values for a 1-D target.
    n_iter_ : int
    n_features_in_ : int

    Notes
    -----
    ``fit(X, Y)`` takes a 0/1 indicator matrix ``Y`` (multi-label; ``predict``
    returns label sets as an indicator matrix) or a 1-D vector of classes
    (multi-class; ``predict`` returns the highest-scoring class). Rows with no
    label have no target distribution ``y/‖y‖₁``: every loss but
    ``"logistic"`` drops them, with a warning, as the papers did. A 1-D target
    with a single class fits no weights (``coef_`` is zero, of one row) and
    predicts that class, with probability 1 (one column, as ``classes_``).

    Two outputs, not to be confused in a multi-label fit:
    :meth:`predict_distribution` is the mapping's distribution over the labels
    (softmax, sparsemax, …: rows sum to 1, so a row with 4 labels has entries
    near 1/4); :meth:`predict_proba` is what scikit-learn means by it, each
    label's probability of being in the set, which only ``"logistic"``
    models; with the other losses it is not available (``hasattr`` is False
    after a multi-label fit). Multi-class fits have both, and they agree.
    """

    def __init__(
        self,
        loss: str = "sparsemax",
        *,
        alpha: float = 1e-3,
        threshold: float | None = None,
        lam: float = 0.0,
        q: float = 1.0,
        fit_intercept: bool = True,
        max_iter: int = 100,
        memory: int = 10,
        tol: float = 1e-6,
        random_state=None,
    ) -> None:
        self.loss = loss
        self.alpha = alpha
        self.threshold = threshold
        self.lam = lam
        self.q = q
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.memory = memory
        self.tol = tol
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.target_tags.multi_output = True
        tags.classifier_tags.multi_label = True
        return tags

    # ---- fitting ----

    def _targets(self, y) -> np.ndarray:
        """The 0/1 label matrix, and ``classes_``, from a label matrix or a class vector."""
        y = np.asarray(y) if not sp.issparse(y) else y.toarray()
        kind = type_of_target(y)
        if kind == "multilabel-indicator":
            if not np.isin(y, (0, 1)).all():
                raise ValueError("Y must be a 0/1 label indicator matrix; it holds other values")
            self._multilabel = True
            Y = y.astype(np.float64)
            self.classes_ = np.arange(Y.shape[1])
            return Y
        if y.ndim == 2 and kind != "multiclass-multioutput" and y.shape[1] == 1:
            y = y.ravel()
        if y.ndim == 2:
            raise ValueError(
                "Y must be a 0/1 label indicator matrix (or a 1-D vector of classes); "
                f"got a target of type {kind!r}"
            )
        check_classification_targets(y)
        self._multilabel = False
        binarizer = LabelBinarizer().fit(y)
        self.classes_ = binarizer.classes_
        if len(self.classes_) == 1:  # LabelBinarizer gives a column of zeros
            return np.ones((len(y), 1))
        Y = binarizer.transform(y).astype(np.float64)
        if Y.shape[1] == 1:  # two classes: LabelBinarizer gives one column
            Y = np.hstack([1 - Y, Y])
        return Y

    def _spec(self) -> _LossSpec:
        """The table's row for ``loss``; ``ValueError`` listing the table's names if none."""
        if not isinstance(self.loss, str) or self.loss not in _LOSSES:
            raise ValueError(f"loss must be one of {sorted(_LOSSES)}; got {self.loss!r}")
        return _LOSSES[self.loss]

    def _check_params(self) -> None:
        """``ValueError`` (out of range, unknown loss) or ``TypeError`` naming the parameter."""
        self._spec()
        check_scalar(self.alpha, "alpha", Real, min_val=0, include_boundaries="left")
        self._check_threshold()
        check_scalar(self.lam, "lam", Real, max_val=1, include_boundaries="neither")
        check_scalar(self.q, "q", Real, min_val=0, include_boundaries="neither")
        if not isinstance(self.fit_intercept, bool | np.bool_):
            raise TypeError(f"fit_intercept must be a bool; got {self.fit_intercept!r}")
        check_scalar(self.max_iter, "max_iter", Integral, min_val=1, include_boundaries="left")
        check_scalar(self.memory, "memory", Integral, min_val=1, include_boundaries="left")
        check_scalar(self.tol, "tol", Real, min_val=0, include_boundaries="left")
        check_random_state(self.random_state)
        self._check_finite()

    def _check_threshold(self) -> None:
        """``threshold`` None or a number; ``predict`` asks too, since it is the one parameter
        a fitted estimator may be given anew (``set_params``) and still use."""
        if self.threshold is None:
            return
        check_scalar(self.threshold, "threshold", Real)
        if math.isnan(self.threshold):  # passes check_scalar's comparisons; predicts no label
            raise ValueError("threshold must be a number, not NaN")

    def _check_finite(self) -> None:
        """No NaN, which ``check_scalar``'s comparisons let through (a NaN ``alpha`` fits
        nothing), and a finite ``alpha`` and ``tol`` (``q = inf`` is sparsemax, as for the
        mapping)."""
        for name in ("alpha", "lam", "q", "tol"):
            if math.isnan(getattr(self, name)):
                raise ValueError(f"{name} must be a number, not NaN")
        for name in ("alpha", "tol"):
            if math.isinf(getattr(self, name)):
                raise ValueError(f"{name} must be finite; got {getattr(self, name)}")

    def fit(self, X: Matrix, y: Matrix) -> LinearMultilabelClassifier:
        """Fit ``W`` and ``b`` by L-BFGS on the regularised mean loss. A fit that raises
        leaves the estimator unfitted (no ``classes_`` of the new data beside an older
        fit's ``coef_``)."""
        try:
            return self._fit(X, y)
        except BaseException:
            for name in _FITTED:
                self.__dict__.pop(name, None)
            raise

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "coef_")

    def _fit(self, X, y) -> LinearMultilabelClassifier:
        self._check_params()
        if not sp.issparse(y):  # lists of labels get scikit-learn's advice, not NumPy's error
            type_of_target(y, input_name="y")
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=np.float64, multi_output=True)
        Y = self._targets(y)
        if self._spec().needs_target_distribution:
            X, Y = self._drop_unlabelled(X, Y)
        n_features, n_labels = X.shape[1], Y.shape[1]
        if n_labels == 1:
            # One class: every mapping of a single score is 1, whatever W; as with
            # scikit-learn's trees and DummyClassifier there is nothing to learn.
            theta, self.n_iter_ = np.zeros(n_features + int(self.fit_intercept)), 0
        else:
            theta, self.n_iter_ = self._minimize(X, Y)
        self.coef_ = theta[: n_features * n_labels].reshape(n_features, n_labels).T.copy()
        self.intercept_ = (
            theta[n_features * n_labels :].copy() if self.fit_intercept else np.zeros(n_labels)
        )
        return self

    def _drop_unlabelled(self, X, Y: np.ndarray) -> tuple:
        """``X`` and ``Y`` without the rows that have no label, with a warning if any."""
        labelled = Y.sum(1) > 0
        if labelled.all():
            return X, Y
        warnings.warn(
            f"{int((~labelled).sum())} of {len(Y)} rows have no label and were dropped "
            f"(loss={self.loss!r} needs the target distribution y/‖y‖₁)",
            UserWarning,
            stacklevel=4,  # (_drop_unlabelled ← _fit ← fit ← the caller)
        )
        if not labelled.any():
            raise ValueError("no row has a label: nothing to fit")
        return X[labelled], Y[labelled]

    def _minimize(self, X, Y: np.ndarray) -> tuple[np.ndarray, int]:
        """L-BFGS on the regularised mean loss: the parameters ``(W.ravel(), b)``, iterations."""
        n_features, n_labels = X.shape[1], Y.shape[1]
        spec = self._spec()
        loss, kwargs = spec.function, spec.kwargs(self)

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            W = theta[: n_features * n_labels].reshape(n_features, n_labels)
            b = theta[n_features * n_labels :] if self.fit_intercept else 0.0
            value, G = losses.loss_and_gradient(loss, X @ W + b, Y, reduction="mean", **kwargs)
            grad_W = np.asarray(X.T @ G) + self.alpha * W
            parts = [grad_W.ravel(), G.sum(0)] if self.fit_intercept else [grad_W.ravel()]
            value += 0.5 * self.alpha * float(np.sum(W * W))
            return value, np.concatenate(parts)

        result = minimize(
            objective,
            self._starting_point(n_features * n_labels + (n_labels if self.fit_intercept else 0)),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": self.max_iter, "maxcor": self.memory, "gtol": self.tol},
        )
        self._warn_unless_converged(result)
        return result.x, int(result.nit)

    def _starting_point(self, size: int) -> np.ndarray:
        """L-BFGS's first ``(W.ravel(), b)``: zero, or tiny and random (``random_start``)."""
        if self._spec().random_start:
            # W = 0 ties every score: a kink of the hinge losses where the gradient
            # L-BFGS is given is no descent direction, so it would stop at once.
            return check_random_state(self.random_state).normal(scale=1e-3, size=(size,))
        return np.zeros(size)

    def _warn_unless_converged(self, result) -> None:
        """``ConvergenceWarning`` for a run out of iterations, or for any other stop scipy
        calls a failure (e.g. ABNORMAL_TERMINATION_IN_LNSRCH), with scipy's reason."""
        if result.success:
            return
        if result.nit >= self.max_iter:
            message = f"L-BFGS did not converge in max_iter={self.max_iter} iterations"
        else:
            # Warned, not raised, as scikit-learn's own L-BFGS fits (LogisticRegression)
            # do: a poor candidate in a search or pipeline should score, not stop it.
            message = (
                f"L-BFGS stopped after {result.nit} of max_iter={self.max_iter} iterations "
                f"without converging (scipy: {str(result.message).strip()!r}). "
                + ("Nothing was learnt: coef_ is the starting point. " if result.nit == 0 else "")
                + "Badly scaled features are the usual cause: scale them, e.g. with "
                "sklearn.preprocessing.StandardScaler."
            )
        # the caller's line: ← _minimize ← _fit ← fit ← the caller
        warnings.warn(message, ConvergenceWarning, stacklevel=5)

    # ---- prediction ----

    def _scores(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", dtype=np.float64, reset=False)
        return np.asarray(X @ self.coef_.T) + self.intercept_

    def decision_function(self, X: Matrix) -> np.ndarray:
        """Scores ``z = X Wᵀ + b``, shape (n_samples, n_labels).

        For a two-class fit on a 1-D target, scikit-learn's convention: one score
        per sample, shape (n_samples,), positive where ``classes_[1]`` is predicted,
        ranking samples as ``predict_proba(X)[:, 1]`` does: the score of
        ``classes_[1]`` minus that of ``classes_[0]``, ``z₁ − z₀``. With
        ``loss="sparsehourglass_hinge"`` it is ``α̂(z)(z₁ − z₀)``, with
        ``α̂(z) = (1 + 2q)/(|z₀ + z₁| + 2q)``: sparsehourglass is not translation
        invariant, and its probability of ``classes_[1]``, ``clip((α̂(z)(z₁ − z₀) +
        1)/2, 0, 1)``, depends on ``z₀ + z₁`` too.
        """
        z = self._scores(X)
        return self._spec().binary_score(z, self) if self._binary else z

    @property
    def _binary(self) -> bool:
        return not self._multilabel and len(self.classes_) == 2

    def _mapping(self, z: np.ndarray) -> np.ndarray:
        """The loss's row-wise mapping of the scores (see ``_LossSpec.mapping``)."""
        return self._spec().mapping(z, self)

    def predict_distribution(self, X: Matrix) -> np.ndarray:
        """The loss's mapping of the scores, a distribution over labels: rows sum to 1.

        softmax (``"softmax"``), ``sparsegen_lin(z, lam)`` (``"sparsemax"``,
        the sparsemax and sparsegen-lin hinges), ``sparsehourglass(z, q)``, or
        σ(z) normalised over the labels (``"logistic"``). The sparse ones have
        exact zeros: their support is what :meth:`predict` returns. Laha et
        al.'s Jensen–Shannon divergence compares it with ``y/‖y‖₁``.
        """
        scores = self._scores(X)
        if self._spec().per_label_probabilities:
            # σ(z)/Σσ(z) in log space: every σ of a row underflows to 0 below z ≈ −745,
            # and the quotient would be 0/0
            return softmax(log_expit(scores), axis=1)
        return self._mapping(scores)

    def _has_per_label_probabilities(self) -> bool:
        multilabel = getattr(self, "_multilabel", False)
        if multilabel and not self._spec().per_label_probabilities:
            raise AttributeError(
                f"predict_proba: a multi-label fit with loss={self.loss!r} gives a "
                "distribution over labels, not each label's probability of being in the "
                "set; use predict_distribution(X) (rows sum to 1) or loss='logistic'"
            )
        return True

    @available_if(_has_per_label_probabilities)
    def predict_proba(self, X: Matrix) -> np.ndarray:
        """Probabilities in scikit-learn's sense.

        Multi-class: the distribution over ``classes_`` (as
        :meth:`predict_distribution`). Multi-label, ``loss="logistic"`` only:
        each label's probability ``σ(z_j)`` of being in the set (columns are
        independent; ``predict`` thresholds them at ``threshold``). A
        multi-label fit with another loss has no such probabilities: use
        :meth:`predict_distribution`.
        """
        check_is_fitted(self)
        if self._multilabel:  # per_label_probabilities here (available_if): each label's own
            return self._mapping(self._scores(X))
        return self.predict_distribution(X)

    def predict(self, X: Matrix) -> np.ndarray:
        """Label sets (0/1 matrix) by the loss's rule; for a multi-class fit, the best class."""
        z = self._scores(X)
        if not self._multilabel:
            return self.classes_[np.argmax(z, axis=1)]
        self._check_threshold()
        return self._spec().rule(self._mapping(z), self.threshold)
