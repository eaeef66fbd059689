"""Independent float64 references, written from the papers (docs/math.md), not the library."""

import math

import numpy as np
import torch
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


def transform_inputs(dtype, k, seed=None):
    """Scores ``(8, k)`` of ``dtype`` and a mask for the gap transforms, with a special row
    each: all 0 (top 1 for |z|, 0 for exp), a +inf (the exact expm1 path) beside finite
    scores whose e^z (and z², where the dtype holds 3e19) overflows, all -inf, a NaN, huge
    scores (e^(z − top) underflows to −1 below the maximum), fully masked, a masked +inf."""
    generator = torch.Generator().manual_seed(k if seed is None else seed)
    x = (5 * torch.randn(8, k, generator=generator)).to(dtype)
    x[1] = 0.0
    x[2, 0] = math.inf
    x[2, 1:3] = torch.tensor([1e4, -6e4 if dtype == torch.float16 else -3e19])[: k - 1]
    x[3] = -math.inf
    x[4, -1] = math.nan
    x[5] *= 1e30 if dtype in (torch.float32, torch.float64) else 1e3
    mask = torch.rand(x.shape, generator=generator) > 0.3
    mask[6] = False
    x[7, 0], mask[7, 0] = math.inf, False
    return x, mask


def transform_reference(x, keep, kind):
    """``(transformed, top)`` of sparsegen-exp's (``"exp_gap"``), -sq's (``"square_gap"``) or
    sum-normalization++'s (``"ratio"``) transform by torch's formulas in float64 (see
    sparsegen._transform_kernels for the rules)."""
    z = x.double()

    def kept(value):
        return z if keep is None else z.masked_fill(~keep, value)

    largest = torch.finfo(torch.float64 if x.dtype == torch.float64 else torch.float32).max

    def limit(gap, scores):  # a finite score's gap that overflows the compute dtype: −1
        return torch.where((gap > largest) & (scores.abs() < math.inf), -1.0, gap)

    if kind == "exp_gap":
        top = kept(-math.inf).amax(-1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, 0.0)
        return limit(torch.expm1(kept(-math.inf) - top), kept(-math.inf)), top
    top = kept(0.0).abs().amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top) & (top > 0), top, 1.0)
    if kind == "ratio":  # over the largest power of two at most the top (exact), its top
        _, exponent = torch.frexp(top)
        divisor = torch.exp2(exponent.double() - 1)
        return kept(0.0) / divisor, divisor
    return limit((kept(0.0) / top) ** 2 - 1, kept(0.0)), top


def assert_transform_matches(out, out_top, x, keep, kind, **tolerance):
    """A kernel's transform against :func:`transform_reference` (rows holding a NaN: only
    that the NaN stays where kept; their top is left open, the output is NaN whatever it
    is)."""
    values, tops = transform_reference(x, keep, kind)
    if not tolerance and x.dtype == torch.float32:  # torch's own float32 tolerances
        tolerance = {"rtol": 1.3e-6, "atol": 1e-5}
    # in the compute dtype: float32 for half scores
    dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    assert out.dtype == dtype and out_top.dtype == dtype
    assert out.shape == x.shape and out_top.shape == (*x.shape[:-1], 1)
    finite_rows = ~torch.isnan(x).any(-1)
    torch.testing.assert_close(out[finite_rows].double(), values[finite_rows], **tolerance)
    torch.testing.assert_close(out_top[finite_rows].double(), tops[finite_rows], **tolerance)
    kept = torch.ones_like(x, dtype=torch.bool) if keep is None else keep
    assert torch.equal(torch.isnan(out) & kept, torch.isnan(x) & kept)


def scaled_vjp_reference(p, g, scale):
    """The VJP of ``z ↦ sparsemax(c z)`` at output ``p`` with the scale's moment, rows in
    float64: ``c·u`` (``u = s ⊙ (g − mean_S g)``) and ``Σ_S u_j (p_j − max p)``; a row
    whose ``c`` is 0, inf or NaN gets ``u·c`` with 0 · inf and 0 · NaN taken as 0, and a
    moment of 0, as does a row without a support."""
    p, g = np.asarray(p, dtype=np.float64), np.asarray(g, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64).reshape(-1, 1)
    in_support = p > 0
    count = in_support.sum(1, keepdims=True)
    mean = np.where(in_support, g, 0).sum(1, keepdims=True) / np.maximum(count, 1)
    usable = np.isfinite(scale) & (scale != 0)
    with np.errstate(invalid="ignore"):
        u = np.where(in_support, g - mean, 0.0)
        limit = np.nan_to_num(
            u * np.where(usable, 0, scale), nan=0.0, posinf=np.inf, neginf=-np.inf
        )
        grad = np.where(usable, scale, 0) * u + limit
        top = np.where(in_support, p, 0).max(1, keepdims=True)
        moment = np.where(in_support, u * (p - top), 0).sum(1)
    return grad, np.where(usable[:, 0] & (count[:, 0] > 0), moment, 0.0)


def scaled_vjp_cases(k, dtype):
    """``(p, g, scale, support)`` rows for :func:`scaled_vjp_reference`: a support of 3, of
    1, none (a NaN row), then the support of 3 at scales that are not usable (0, inf, NaN),
    the first beside an infinite gradient."""
    generator = np.random.default_rng(1)
    p = np.zeros((6, k))
    p[:, [2, 5, 11]] = [0.5, 0.3, 0.2]
    p[1, [2, 5, 11]] = [1.0, 0.0, 0.0]
    p[2] = np.nan
    g = generator.standard_normal((6, k))
    g[3, 5] = np.inf  # where the scale is 0: u·0 is NaN, as c·u
    scale = np.array([2.0, 3.0, 0.5, 0.0, np.inf, np.nan])
    return p.astype(dtype), g.astype(dtype), scale, np.array([3, 1, 0, 3, 3, 3])
