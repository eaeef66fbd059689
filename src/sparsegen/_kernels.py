"""Compiled CPU kernels (numba) for the simplex projection and its backward pass.

This module is imported lazily, on the first projection of a CPU tensor, so that
``import sparsegen`` does not pay for numba. Compiled code is cached on disk
(``cache=True``), so only the first process ever compiles.

The kernels take 2-D C-contiguous arrays ``(rows, K)`` and write into
preallocated outputs; the torch layer owns shapes, dims and dtypes.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

# Below this many elements a call runs on one thread: starting the pool costs more.
PARALLEL_MIN_ELEMENTS = 1 << 15


@njit(cache=True, nogil=True)
def _fill_special_row(y, scale, out):
    """Output for a row whose scaled scores have no finite maximum.

    Same rules as the torch paths (``_projection.special_rows``): a NaN score
    gives a NaN row; +inf scores share the mass equally (the limit of
    sparsemax); a row of -inf only gives zeros. Returns ``(tau, support_size)``.
    """
    k = y.shape[0]
    n_posinf = 0
    for j in range(k):
        yj = scale * y[j]
        if yj != yj:
            out[:] = np.nan
            return np.nan, 0
        n_posinf += yj == np.inf
    if n_posinf == 0:
        out[:] = 0.0
        return -np.inf, 0
    share = 1.0 / n_posinf
    for j in range(k):
        out[j] = share if scale * y[j] == np.inf else 0.0
    return np.inf, n_posinf


@njit(cache=True, nogil=True)
def _project_row(y, scale, out, v, w):
    """Project ``scale * y`` onto the simplex; returns ``(tau, support_size)``.

    Condat's algorithm runs on the raw scores, which is one pass for the usual
    magnitudes. When the scores are so large that subtracting 1 is lost to
    rounding it cannot keep a support; the row is then redone on scores
    shifted by their maximum (sparsemax is translation invariant).
    """
    nv = _condat(y, scale, 0.0, v, w)
    if nv < 0:  # special values: NaN, +inf or a row of -inf
        return _fill_special_row(y, scale, out)
    shift = 0.0
    if nv == 0:
        shift = -np.inf
        for j in range(y.shape[0]):
            shift = max(shift, scale * y[j])
        nv = _condat(y, scale, shift, v, w)
        if nv == 0:  # unreachable in exact arithmetic: the maximum, 0, is above τ ≥ −1
            v[0] = 0.0
            nv = 1
    return _write_output(y, scale, shift, nv, v, out)


@njit(cache=True, nogil=True)
def _condat(y, scale, shift, v, w):
    """Condat's exact algorithm (2016) on ``scale * y − shift``.

    ``v`` and ``w`` are scratch buffers of length K; on return ``v[:nv]`` holds
    the support's shifted scores. Scores and the running threshold are float64
    whatever the input dtype, so scaling a float32 row cannot overflow.
    Returns ``nv``, or -1 when the row needs the special-value rules.
    """
    k = y.shape[0]
    start = 0
    # -inf entries never enter the support; NaN is caught below.
    while start < k and not (y[start] > -np.inf):
        start += 1
    if start == k or scale != scale:
        return -1
    has_nan = False
    nv = 1
    nw = 0
    v[0] = scale * y[start] - shift
    rho = v[0] - 1.0
    for j in range(start + 1, k):
        yj = scale * y[j] - shift
        if yj > rho:
            rho += (yj - rho) / (nv + 1)
            if rho > yj - 1.0:
                v[nv] = yj
                nv += 1
            else:
                for i in range(nv):
                    w[nw + i] = v[i]
                nw += nv
                v[0] = yj
                nv = 1
                rho = yj - 1.0
        elif yj != yj:
            has_nan = True
    if has_nan or not (rho < np.inf):
        return -1
    for i in range(nw):
        if w[i] > rho:
            v[nv] = w[i]
            nv += 1
            rho += (w[i] - rho) / nv
    changed = True
    while changed:
        changed = False
        i = 0
        while i < nv:
            if v[i] <= rho:
                nv -= 1
                if nv == 0:
                    return 0
                rho += (rho - v[i]) / nv
                v[i] = v[nv]
                changed = True
            else:
                i += 1
    return nv


@njit(cache=True, nogil=True)
def _write_output(y, scale, shift, nv, v, out):
    """Write ``[scale * y − shift − τ]_+``, ``τ`` recomputed from the support in one sum.

    Returns the threshold of the unshifted scores and the support size.
    """
    total = 0.0
    for i in range(nv):
        total += v[i]
    tau = (total - 1.0) / nv
    support = 0
    for j in range(y.shape[0]):
        d = (scale * y[j] - shift) - tau
        if d > 0:
            out[j] = d
            support += 1
        else:
            out[j] = 0.0
    return tau + shift, support


@njit(cache=True, nogil=True)
def _project_block(x, scale, out, tau, support, lo, hi):
    k = x.shape[1]
    v = np.empty(k, dtype=np.float64)
    w = np.empty(k, dtype=np.float64)
    for r in range(lo, hi):
        t, s = _project_row(x[r], scale[r], out[r], v, w)
        tau[r] = t
        support[r] = s


@njit(cache=True, nogil=True)
def _project_rows_serial(x, scale, out, tau, support):
    _project_block(x, scale, out, tau, support, 0, x.shape[0])


@njit(cache=True, nogil=True, parallel=True)
def _project_rows_parallel(x, scale, out, tau, support, n_blocks):
    n = x.shape[0]
    for b in prange(n_blocks):
        _project_block(x, scale, out, tau, support, b * n // n_blocks, (b + 1) * n // n_blocks)


@njit(cache=True, nogil=True)
def _backward_block(p, g, scale, support, grad, lo, hi):
    k = p.shape[1]
    for r in range(lo, hi):
        s = support[r]
        if s == 0:
            for j in range(k):
                grad[r, j] = 0.0
            continue
        acc = 0.0
        for j in range(k):
            if p[r, j] > 0:
                acc += g[r, j]
        mean = acc / s
        c = scale[r]
        for j in range(k):
            grad[r, j] = c * (g[r, j] - mean) if p[r, j] > 0 else 0.0


@njit(cache=True, nogil=True)
def _backward_rows_serial(p, g, scale, support, grad):
    _backward_block(p, g, scale, support, grad, 0, p.shape[0])


@njit(cache=True, nogil=True, parallel=True)
def _backward_rows_parallel(p, g, scale, support, grad, n_blocks):
    n = p.shape[0]
    for b in prange(n_blocks):
        _backward_block(p, g, scale, support, grad, b * n // n_blocks, (b + 1) * n // n_blocks)


def _blocks(n_rows: int, n_elements: int, n_threads: int) -> int:
    """How many row blocks to split a call into; 1 means run on this thread."""
    if n_threads <= 1 or n_elements < PARALLEL_MIN_ELEMENTS:
        return 1
    n_threads = min(n_threads, numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != n_threads:
        numba.set_num_threads(n_threads)
    return min(n_rows, 4 * n_threads)


def project_rows(
    x: np.ndarray, scale: np.ndarray, n_threads: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project ``scale[r] * x[r]`` onto the simplex for each row of a C-contiguous 2-D array.

    ``scale`` is float64 with one entry per row. Returns ``(output, tau, support_size)``.
    """
    out = np.empty_like(x)
    tau = np.empty(x.shape[0], dtype=x.dtype)
    support = np.empty(x.shape[0], dtype=np.int64)
    n_blocks = _blocks(x.shape[0], x.size, n_threads)
    if n_blocks > 1:
        _project_rows_parallel(x, scale, out, tau, support, n_blocks)
    else:
        _project_rows_serial(x, scale, out, tau, support)
    return out, tau, support


def backward_rows(
    p: np.ndarray, g: np.ndarray, scale: np.ndarray, support: np.ndarray, n_threads: int
) -> np.ndarray:
    """Vector-Jacobian product of ``z ↦ sparsemax(scale * z)``: ``scale · s ⊙ (g − mean_S g)``."""
    grad = np.empty_like(g)
    n_blocks = _blocks(p.shape[0], p.size, n_threads)
    if n_blocks > 1:
        _backward_rows_parallel(p, g, scale, support, grad, n_blocks)
    else:
        _backward_rows_serial(p, g, scale, support, grad)
    return grad
