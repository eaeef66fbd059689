r"""Compiled CPU kernels (numba) for the transforms that sparsegen-exp, sparsegen-sq and
sum-normalization++ apply before the projection.

Each is one call over the rows (2-D C-contiguous, like :mod:`sparsegen._kernels`):
a pass for the row's reference value ``top`` and a pass that writes the
transformed scores, where torch takes four to six passes (abs, amax, a
division, expm1 or a square, masked_fill), each as costly as a projection.

* ``EXP_GAP``: ``top = max_j z_j`` over the kept entries (0 where not finite),
  ``out = expm1(z − top)``, masked entries −1.
* ``SQUARE_GAP``: ``top = max_j |z_j|`` (1 where 0 or not finite),
  ``out = (z/top)² − 1`` (factored, :func:`_square_gap`), masked entries −1.
* For both, a finite score whose gap overflows (only under a top of +inf, taken as 0
  or 1) gets −1, its limit: beside the +inf entries it gets 0, as any finite gap.
* ``RATIO``: ``out = z/u``, ``u`` the largest power of two at most ``SQUARE_GAP``'s
  ``top`` (exact), masked entries 0; ``top`` is ``u`` (the ratio's derivative is ``1/u``).

A NaN in a row may or may not reach its ``top``; the transformed NaN entry
makes the projection's output NaN either way.

``expm1`` is a vectorised polynomial (numba has no vector math library here,
and torch's ``expm1`` is costlier per element than a vectorised polynomial): Cody–Waite
reduction ``d = n ln 2 + r``, ``|r| ≤ ln 2/2``, Taylor series of ``e^r − 1``
(degree 8 in float32, 14 in float64), and ``2^n`` built in the exponent bits;
``e^d − 1 = 2^n (e^r − 1) + (2^n − 1)`` keeps the relative precision near 0.
Within 2 ulp of the correctly rounded value (tested against float64 NumPy).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from sparsegen import _numba_cache  # noqa: F401  (keys the cache on every kernel source)
from sparsegen._kernels import (
    _blocks,
    _candidates,
    _capped,
    _fill_special_row,
    _float_from_bits,
    _key_max,
    _launch,
    _like_row,
    _project_row_in_place,
    _scatter_support,
    _solve_candidates,
    candidate_capacity,
    fill_masked,
    seed_length,
)

EXP_GAP, SQUARE_GAP, RATIO = 0, 1, 2
MASKED_BLOCK_ELEMENTS = 4096  # a masked transform's buffer: 16 or 32 KiB, in L1 or L2


def _expm1_nonpositive(d):
    """``expm1(d)`` for ``d ≤ 0`` or NaN, in ``d``'s dtype (numba only)."""
    raise NotImplementedError("compiled code only")


# Per dtype: (its float and int types, the argument below which e^d − 1 rounds to −1,
# ln 2 split so that n · hi is exact, the exponent bias and the mantissa's bits,
# the Taylor degree).
_EXP_CONSTANTS = {
    types.float32: (np.float32, np.int32, -88.0, 0.693359375, -2.12194440e-4, 127, 23, 8),
    types.float64: (
        np.float64,
        np.int64,
        -709.0,
        6.93147180369123816490e-01,
        1.90821492927058770002e-10,
        1023,
        52,
        14,
    ),
}


@overload(_expm1_nonpositive, inline="always")
def _expm1_nonpositive_for(d):
    real, integer, lowest, hi, lo, bias, bits, degree = _EXP_CONSTANTS[d]
    lowest, hi, lo, one, half = real(lowest), real(hi), real(lo), real(1.0), real(0.5)
    log2e = real(1.0 / math.log(2.0))
    bias, bits = integer(bias), integer(bits)
    # 1/k! for k = degree … 2, for Horner's scheme
    inverse_factorials = tuple(real(1.0 / math.factorial(k)) for k in range(degree, 1, -1))

    def expm1(d):
        x = d if d > lowest else lowest  # below, e^d − 1 is −1 to the dtype's precision
        n = np.floor(x * log2e + half)
        r = (x - n * hi) - n * lo
        p = real(0.0)
        for c in inverse_factorials:  # unrolled: a tuple
            p = p * r + c
        em1 = (p * r) * r + r  # e^r − 1
        power = _float_from_bits(integer((integer(n) + bias) << bits))  # 2^n
        value = power * em1 + (power - one)
        return value if d == d else d

    return expm1


@njit(cache=True, nogil=True)
def _write_exp_gap_exactly(x, r, out):
    """A row whose maximum is not finite: ``top = 0``, so ``z − top`` may be positive,
    beyond the polynomial's range. A finite score whose gap overflows (under a top of
    +inf) takes −1, the limit of ``e^{z − top} − 1``: beside the +inf entries any finite
    gap gets 0, an overflowed one would share their mass."""
    for j in range(x.shape[1]):
        out[r, j] = _overflow_to_limit(np.expm1(x[r, j]), x[r, j])


@njit(cache=True, nogil=True, inline="always")
def _overflow_to_limit(gap, score):
    """−1 for a finite score's gap that overflowed (only under a top of +inf), its limit."""
    return -1.0 if gap == np.inf and abs(score) < np.inf else gap


# One function a transform, looping over the rows itself: per-row calls would cost
# more than the transform of a short row.


@njit(cache=True, nogil=True, fastmath={"contract"})  # FMAs in the polynomial
def _exp_gap_rows(x, out, top, lo, hi):
    for r in range(lo, hi):
        m = _key_max(x, None, r, x.shape[1], False)
        if not (-np.inf < m < np.inf):
            top[r] = 0.0
            _write_exp_gap_exactly(x, r, out)
            continue
        top[r] = m
        for j in range(x.shape[1]):
            out[r, j] = _expm1_nonpositive(x[r, j] - m)


@njit(cache=True, nogil=True, inline="always")
def _square_gap(magnitude, top, one):
    """``(|z|/top)² − 1`` as ``((|z| − top)/top)(|z|/top + 1)``: ``|z| − top`` is exact
    near the top, where the support is, so the gap keeps its relative precision."""
    return (magnitude - top) / top * (magnitude / top + one)


@njit(cache=True, nogil=True)
def _divided_rows(x, out, top, lo, hi, squared):
    one = _like_row(x, 1.0)
    for r in range(lo, hi):
        m = _key_max(x, None, r, x.shape[1], True)
        if squared and not m < np.inf:  # +inf or NaN: see _write_square_gap_unscaled
            top[r] = one
            _write_square_gap_unscaled(x, r, out, one)
            continue
        m = m if 0 < m < np.inf else one
        if not squared:  # (the ratio to a power of two: exact, see _power_of_two_at_most)
            m = _like_row(x, _power_of_two_at_most(m))
        top[r] = m
        for j in range(x.shape[1]):
            out[r, j] = _square_gap(abs(x[r, j]), m, one) if squared else x[r, j] / m


@njit(cache=True, nogil=True)
def _power_of_two_at_most(m):
    """The largest power of two at most ``m`` (positive, finite), in float64. Scores divided
    by it keep their own digits, so that the differences near the top stay exact: divided
    by ``m`` itself, each rounded once, and sum-normalization++'s scale ``1/|Σ z/m|``
    multiplied those roundings by the sum's cancellation (1e-4 off in float32)."""
    _, exponent = math.frexp(np.float64(m))
    return math.ldexp(0.5, exponent)


@njit(cache=True, nogil=True)
def _write_square_gap_unscaled(x, r, out, one):
    """A row whose largest magnitude is +inf (or NaN): ``top = 1``, and a finite score
    whose gap ``z² − 1`` overflows takes −1, its limit under an infinite top, as in
    :func:`_write_exp_gap_exactly`."""
    for j in range(x.shape[1]):
        out[r, j] = _overflow_to_limit(_square_gap(abs(x[r, j]), one, one), x[r, j])


@njit(cache=True, nogil=True)
def _transform_unmasked(x, kind, out, top, lo, hi):
    if kind == EXP_GAP:
        _exp_gap_rows(x, out, top, lo, hi)
    else:
        _divided_rows(x, out, top, lo, hi, kind == SQUARE_GAP)


@njit(cache=True, nogil=True)
def _transform_block(x, keep, kind, out, top, lo, hi):
    if keep is None:
        _transform_unmasked(x, kind, out, top, lo, hi)
        return
    # Masked rows are first copied with the maximum's identity in their masked
    # entries (-inf, or 0 for |z|), whose transform is the fill the rules ask for
    # (−1, −1, 0): the masked reductions themselves would not vectorise. A block of
    # rows at a time, in a buffer that stays in cache: row by row, the slicing cost
    # more than a short row's transform.
    rows = max(1, min(hi - lo, MASKED_BLOCK_ELEMENTS // max(1, x.shape[1])))
    buffer = np.empty((rows, x.shape[1]), dtype=x.dtype)
    fill = -np.inf if kind == EXP_GAP else 0.0
    for start in range(lo, hi, rows):
        stop = min(start + rows, hi)
        block = buffer[: stop - start]
        fill_masked(x[start:stop], keep[start:stop], fill, block)
        _transform_unmasked(block, kind, out[start:stop], top[start:stop], 0, stop - start)


@njit(cache=True, nogil=True)
def _transform_rows_serial(x, keep, kind, out, top):
    _transform_block(x, keep, kind, out, top, 0, x.shape[0])


@njit(cache=True, nogil=True, parallel=True)
def _transform_rows_parallel(x, keep, kind, out, top, n_blocks):
    n = x.shape[0]
    for b in prange(n_blocks):
        _transform_block(x, keep, kind, out, top, b * n // n_blocks, (b + 1) * n // n_blocks)


def transform_rows(
    x: np.ndarray,
    keep: np.ndarray | None,
    kind: int,
    out: np.ndarray,
    top: np.ndarray,
    n_threads: int,
) -> None:
    """Write the transformed rows into ``out`` and each row's ``top`` into ``top``
    (float64, one per row); ``kind`` and the rules in the module docstring."""
    n_blocks = _blocks(x.shape[0], x.size, n_threads)
    _launch(_transform_rows_parallel, _transform_rows_serial, n_blocks, x, keep, kind, out, top)


# The transforms' derivatives, for a backward that nothing records (the torch formulas in
# :class:`sparsegen._ops._TransformFunction` otherwise): one pass where torch takes five or
# six (a product, a sum, comparisons and their bool masks, a select).


@njit(cache=True, nogil=True)
def _exp_gap_backward(gap, grad, out, lo, hi):
    """``grad · (gap + 1)`` (``e^{z−top}``), 0 at an infinite gap beside a finite ``grad``
    (an infinite score's slice is the limit, a constant)."""
    one, zero = _like_row(out, 1.0), _like_row(out, 0.0)
    for r in range(lo, hi):
        for j in range(gap.shape[1]):
            v, g = gap[r, j], grad[r, j]
            # (& not and: no branch, so that the loop vectorises)
            out[r, j] = zero if (v == np.inf) & (abs(g) < np.inf) else g * (v + one)


@njit(cache=True, nogil=True)
def _square_gap_backward(z, keep, grad, top, out, lo, hi):
    """``grad · 2(z/top)/top`` in that order (``2z``, ``top²`` or ``1/top`` may
    overflow), 0 at an infinite score beside a finite ``grad`` and at masked entries."""
    two, zero = _like_row(out, 2.0), _like_row(out, 0.0)
    for r in range(lo, hi):
        t = _like_row(out, top[r])
        for j in range(z.shape[1]):
            x, g = z[r, j], grad[r, j]
            dropped = (abs(x) == np.inf) & (abs(g) < np.inf)
            if keep is not None:  # (compiled away without a mask)
                dropped = dropped | ~keep[r, j]
            out[r, j] = zero if dropped else g * (two * (x / t)) / t


@njit(cache=True, nogil=True)
def _transform_backward_block(saved, keep, grad, top, kind, out, lo, hi):
    if kind == EXP_GAP:
        _exp_gap_backward(saved, grad, out, lo, hi)
    else:
        _square_gap_backward(saved, keep, grad, top, out, lo, hi)


@njit(cache=True, nogil=True)
def _transform_backward_serial(saved, keep, grad, top, kind, out):
    _transform_backward_block(saved, keep, grad, top, kind, out, 0, saved.shape[0])


@njit(cache=True, nogil=True, parallel=True)
def _transform_backward_parallel(saved, keep, grad, top, kind, out, n_blocks):
    n = saved.shape[0]
    for b in prange(n_blocks):
        lo, hi = b * n // n_blocks, (b + 1) * n // n_blocks
        _transform_backward_block(saved, keep, grad, top, kind, out, lo, hi)


def transform_backward_rows(
    saved: np.ndarray,
    keep: np.ndarray | None,
    grad: np.ndarray,
    top: np.ndarray,
    kind: int,
    out: np.ndarray,
    n_threads: int,
) -> None:
    """Write ``∂L/∂z`` of ``EXP_GAP`` (``saved``: the gaps) or ``SQUARE_GAP`` (``saved``: the
    scores; ``top`` float64, one per row) into ``out``."""
    n_blocks = _blocks(saved.shape[0], saved.size, n_threads)
    kernels = (_transform_backward_parallel, _transform_backward_serial)
    _launch(*kernels, n_blocks, saved, keep, grad, top, kind, out)


# Long rows of sparsegen-exp and sparsegen-sq (masked or not), projected without
# transforming the row:
# their transforms are increasing in z (in |z| for the square), so the support's
# candidates are found on the scores themselves, and only those are transformed.


@njit(cache=True, nogil=True)
def _gap_scale(x, kind, top, log_c):
    """The scale the projection applies to a row's gaps, ``e^top/(1−λ)`` or ``top²/(1−λ)``
    (``log_c = −log(1−λ)``), in the row's dtype and capped at its largest value, as
    :func:`sparsegen.functional._gap_scale` computes it."""
    log_scale = (top if kind == EXP_GAP else 2.0 * np.log(top)) + log_c
    return _capped(x, np.float64(_like_row(x, np.exp(log_scale))))


@njit(cache=True, nogil=True)
def _usable_top(top, absolute):
    """Whether a row's maximum (of ``|z|`` with ``absolute``) gives finite gaps."""
    return (0 < top < np.inf) if absolute else (-np.inf < top < np.inf)


@njit(cache=True, nogil=True, error_model="numpy")
def _transformed_long_row(x, keep, r, kind, log_c, out, tau, support, values, index, buffer, top):
    """Row ``r`` of ``sparsemax(scale · gap(x))`` (``EXP_GAP`` or ``SQUARE_GAP``).

    The gap is ``v = s·expm1(z − m)`` or ``v = s·((z/m)² − 1)`` (``m`` the row's
    maximum of ``z`` or ``|z|``, ``s`` :func:`_gap_scale`); the support holds
    only entries with ``v > −1``, that is ``z − m > log1p(−1/s)`` or
    ``|z| > m·sqrt(1 − 1/s)``: candidates read off the scores in one pass,
    as sparsemax's long rows find theirs, and only they are transformed.
    Where that is not the few (``s ≤ 1``, a flat row), or the row's maximum is
    not finite, or it holds a NaN, the row is transformed into ``buffer`` and
    solved there as the unfused path does. Masked entries (``keep``) are
    scores of -inf to the projection, as there.
    """
    absolute = kind == SQUARE_GAP
    k = x.shape[1]
    m = _key_max(x, keep, r, seed_length(k), absolute)  # a seed
    n = -1
    if _usable_top(m, absolute):
        s = _gap_scale(x, kind, m, log_c)
        if s > 1.0:
            # The floor of the seed's gaps: below the row's own (both floors rise with
            # the maximum), so the candidates are a superset, and the row's maximum
            # is among them.
            room = np.log1p(-1.0 / s) if kind == EXP_GAP else m * (np.sqrt(1.0 - 1.0 / s) - 1.0)
            m, n = _candidates(x, keep, r, m, room, absolute, values, index)
            if n >= 0 and _usable_top(m, absolute):
                s = _gap_scale(x, kind, m, log_c)
            else:
                n = -1
    if n < 0:
        rows = slice(r, r + 1)
        kept = None if keep is None else keep[rows]
        _transform_block(x[rows], kept, kind, buffer, top, 0, 1)
        if kept is not None:  # masked gaps are scores of -inf to the projection
            fill_masked(buffer, kept, -np.inf, buffer)
        s = _gap_scale(x, kind, top[0], log_c)
        _project_row_in_place(buffer, 0, s, out[rows], tau[rows], support[rows], values, index)
        if support[r] < 0:
            tau[r], support[r] = _fill_special_row(buffer, kept, 0, s, out[rows])
        return
    for i in range(n):
        if kind == EXP_GAP:
            values[i] = s * np.expm1(values[i] - m)
        else:
            values[i] = s * _square_gap(abs(values[i]), m, 1.0)
    tau[r] = _solve_candidates(values, n, -1.0)  # the gaps' maximum is 0
    support[r] = _scatter_support(values, index, n, tau[r], out, r)


@njit(cache=True, nogil=True)
def _transformed_long_block(x, keep, kind, log_c, out, tau, support, lo, hi):
    values = np.empty(candidate_capacity(x.shape[1]), dtype=np.float64)
    index = np.empty(values.shape[0], dtype=np.int64)
    buffer = np.empty((1, x.shape[1]), dtype=x.dtype)
    top = np.empty(1)
    for r in range(lo, hi):
        row = (x, keep, r, kind, log_c[r], out, tau, support)
        _transformed_long_row(*row, values, index, buffer, top)


@njit(cache=True, nogil=True)
def _transformed_long_rows_serial(x, keep, kind, log_c, out, tau, support):
    _transformed_long_block(x, keep, kind, log_c, out, tau, support, 0, x.shape[0])


@njit(cache=True, nogil=True, parallel=True)
def _transformed_long_rows_parallel(x, keep, kind, log_c, out, tau, support, n_blocks):
    n = x.shape[0]
    for b in prange(n_blocks):
        lo, hi = b * n // n_blocks, (b + 1) * n // n_blocks
        _transformed_long_block(x, keep, kind, log_c, out, tau, support, lo, hi)


def project_transformed_long_rows(
    x: np.ndarray,
    keep: np.ndarray | None,
    kind: int,
    log_c: np.ndarray,
    out: np.ndarray,
    tau: np.ndarray,
    support: np.ndarray,
    n_threads: int,
) -> None:
    """``sparsemax(scale · gap(x))`` for long rows, masked by ``keep`` (or None), ``kind``
    ``EXP_GAP`` or ``SQUARE_GAP``, ``log_c = −log(1−λ)`` per row (float64): the
    output, the gaps' threshold and the support size, as the transform then the
    projection give them."""
    n_blocks = _blocks(x.shape[0], x.size, n_threads)
    args = (x, keep, kind, log_c, out, tau, support)
    _launch(_transformed_long_rows_parallel, _transformed_long_rows_serial, n_blocks, *args)
