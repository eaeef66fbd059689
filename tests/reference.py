"""Independent float64 references, written from the papers (docs/math.md), not the library."""

import numpy as np
from scipy.optimize import minimize


def sparsemax_bisect(z, lam=0.0, iterations=200):
    """Sparsemax of z/(1-lam) along the last axis, by bisection on τ in [max-1, max].

    Scores are shifted by their maximum first (translation invariance), so that
    the bracket does not vanish in rounding for huge scores.
    """
    z = np.asarray(z, dtype=np.float64) / (1.0 - lam)
    z = z - z.max(-1, keepdims=True)
    hi = np.zeros((*z.shape[:-1], 1))
    lo = hi - 1.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        mass = np.clip(z - mid, 0, None).sum(-1, keepdims=True)
        lo = np.where(mass >= 1, mid, lo)
        hi = np.where(mass >= 1, hi, mid)
    return np.clip(z - (lo + hi) / 2, 0, None)


def sparsemax_qp(z):
    """argmin_{p in simplex} ||p - z||^2 for one vector, by scipy's SLSQP."""
    z = np.asarray(z, dtype=np.float64)
    k = z.size
    result = minimize(
        lambda p: np.sum((p - z) ** 2),
        np.full(k, 1.0 / k),
        jac=lambda p: 2 * (p - z),
        bounds=[(0, 1)] * k,
        constraints=[{"type": "eq", "fun": lambda p: p.sum() - 1, "jac": lambda p: np.ones(k)}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    return result.x


def hard_sigmoid(t):
    """sparsemax((t, 0))_1, a hard sigmoid (docs/math.md, the two-dimensional case)."""
    return np.clip((np.asarray(t, dtype=np.float64) + 1) / 2, 0, 1)


def sum_scale_reference(z, q, mirror):
    """Sparsecone's α = (1 + Kq)/(Σz + Kq), or sparsehourglass's α̂ with |Σz|, per row
    (last axis), summed in extended precision (its range holds sums that overflow float64)."""
    z = np.asarray(z, dtype=np.longdouble)
    k = z.shape[-1]
    total = z.sum(-1, keepdims=True)
    if mirror:
        total = np.abs(total)
    return (1 + k * np.longdouble(q)) / (total + k * np.longdouble(q))


def scaled_sparsemax_reference(z, q, mirror):
    """sparsemax(α(z) z) with α from :func:`sum_scale_reference`, in float64 after the scale."""
    scaled = (sum_scale_reference(z, q, mirror) * np.asarray(z, dtype=np.longdouble)).astype(
        np.float64
    )
    return sparsemax_bisect(scaled)
