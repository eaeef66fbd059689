"""Compiled CPU kernels (numba) for the simplex projection and its backward pass.

This module is imported lazily, on the first projection of a CPU tensor, so that
``import sparsegen`` does not pay for numba. Compiled code is cached on disk
(``cache=True``), so only the first process ever compiles; the cache is keyed on
every kernel module's source (:mod:`sparsegen._numba_cache`), so an edit of one
recompiles the functions of another that inline it.

The kernels take 2-D C-contiguous arrays ``(rows, K)`` and write into
preallocated outputs; the torch layer owns shapes, dims and dtypes.

A mask (``keep``, booleans like the scores) makes its entries scores of -inf.
Short rows are copied a block at a time into a small buffer with -inf in their
masked entries, which the lockstep solver then reads: one cache-resident pass,
cheaper than testing the mask in each of its passes (whose branches meet a
random mask). Long rows read the mask in the max pass over their seed (a select)
and in the copy of each chunk that holds candidates; the count that finds such
chunks reads the scores alone (see :func:`_candidates`).
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic, overload
from numba.np.numpy_support import as_dtype

from sparsegen import (
    _fork,
    _numba_cache,  # noqa: F401  (keys the cache on every kernel source)
)

# Below this many elements a call runs on one thread: starting the pool costs more.
PARALLEL_MIN_ELEMENTS = 1 << 15
# Rows this long are first reduced to their few candidates; shorter ones are
# solved ROW_BLOCK at a time on the row itself.
LONG_ROW = 2048
ROW_BLOCK = 64
# The unit of a float64 sum that overflows (sparsegen._projection.SUM_UNIT, which a test
# holds equal: numba's cache is keyed on these modules' sources alone).
SUM_UNIT = 2.0**64
# Long rows seed their running maximum from this many entries (or K/64 if more),
# and hold at most K/16 candidates (at least 64, at most CANDIDATES): more means a
# flat row, solved in place, since its vectorised passes in the row's dtype beat
# copying a sixteenth of it out entry by entry (as sparsegen-lin's rows at a
# strongly negative λ show).
SEED_LENGTH = 8192
CANDIDATES = 4096
# A flat row's gaps above its bound are copied out when under 1/COPIED_DENSITY of the row.
COPIED_DENSITY = 64
# A long row with more than 1/FLAT_DENSITY of its first FLAT_SAMPLE entries within 1/scale
# of their maximum is taken for flat and solved in place: copying out a few percent of a
# row entry by entry costs more than the in-place passes (twice as much at a sixth).
FLAT_DENSITY = 32
FLAT_SAMPLE = 512
# The candidate pass counts this many entries against its floor in one vectorised
# loop before it looks closer (cheaper than testing each block of 8's maximum with a
# branch; chunks of 16 or 32 vectorise less well).
CHUNK = 64


@njit(cache=True, nogil=True)
def seed_length(k):
    """How many leading entries of a long row of ``k`` seed its running maximum."""
    return min(k, max(SEED_LENGTH, k // 64))


@njit(cache=True, nogil=True)
def candidate_capacity(k):
    """How many candidates a long row of ``k`` entries may hold before it is solved in place."""
    return min(max(k // 16, 64), CANDIDATES)


# Where a row's scale comes from: given in ``scale``, or computed into it from the row
# and its q as sparsecone's α or sparsehourglass's α̂ (:func:`_cone_scale`).
SCALE_GIVEN, SCALE_CONE, SCALE_HOURGLASS = 0, 1, 2

# Row states in the lockstep solver.
MOVING, CONVERGED, SPECIAL = 0, 1, 2


@njit(cache=True, nogil=True)
def _value(x, keep, r, j):
    """``x[r, j]``, or -inf where ``keep`` (a boolean array like ``x``, or None) is False:
    a masked entry is a score of -inf, 0 in the output."""
    if keep is None or keep[r, j]:
        return x[r, j]
    return _like_row(x, -np.inf)


@njit(cache=True, nogil=True)
def _fill_special_row(x, keep, r, scale, out):
    """Output for row ``r`` when it holds a NaN, has no finite maximum, or a NaN scale.

    Same rules as the torch paths (``_projection.special_rows``), read off the
    scores themselves (a positive scale, even 0 or inf, does not change which
    are NaN or ±inf): a NaN score gives a NaN row; +inf scores share the mass
    equally (the limit of sparsemax); a row of -inf only gives zeros; finite
    scores with a NaN scale (outside sparsecone's domain) give a NaN row.
    Masked entries are -inf scores, and 0 even in a NaN row.
    Returns ``(tau, support_size)``.
    """
    k = x.shape[1]
    n_posinf = 0
    n_neginf = 0
    for j in range(k):
        v = _value(x, keep, r, j)
        if v != v:
            n_posinf = -1
            break
        n_posinf += v == np.inf
        n_neginf += v == -np.inf
    if n_posinf < 0 or (n_posinf == 0 and n_neginf < k):  # a NaN score, or a NaN scale
        for j in range(k):
            out[r, j] = np.nan if keep is None or keep[r, j] else 0.0
        return np.nan, 0
    share = 1.0 / max(n_posinf, 1)
    for j in range(k):
        out[r, j] = share if _value(x, keep, r, j) == np.inf else 0.0
    return (np.inf, n_posinf) if n_posinf else (-np.inf, 0)


def _like_row(x, value):
    """``value`` as a scalar of ``x``'s dtype, a compile-time type (numba only)."""
    raise NotImplementedError("compiled code only")


@overload(_like_row)
def _like_row_for(x, value):
    scalar = as_dtype(x.dtype).type

    def cast(x, value):
        return scalar(value)

    return cast


def _capped(x, scale):
    """``scale`` capped at the largest finite value of ``x``'s dtype (numba only)."""
    raise NotImplementedError("compiled code only")


@overload(_capped)
def _capped_for(x, scale):
    # An overflowing scale (sparsehourglass's α̂ at tiny q) would be inf in a
    # float32 row and give 0 · inf = NaN at the maximum; the largest finite
    # scale already gives the limit, the maxima sharing the mass.
    largest = float(np.finfo(as_dtype(x.dtype)).max)

    def cap(x, scale):
        return largest if scale > largest else scale  # NaN stays NaN

    return cap


@njit(cache=True, nogil=True, inline="always")
def _larger(a, b):
    return a if a > b else b


@njit(cache=True, nogil=True)
def _push(first, second, v):
    """The two largest of ``first ≥ second`` and ``v``."""
    return _larger(first, v), _larger(second, v if v < first else first)


@njit(cache=True, nogil=True)
def _row_top_two(x, r, k):
    """The maximum of ``x[r, :k]`` (``k ≥ 1``) and a lower bound on the second largest
    (-inf if ``k = 1``).

    Eight independent accumulators, so that LLVM vectorises the pass (it will not
    vectorise a float max reduction: numba cannot give it the function-wide no-NaN
    attribute it needs). The bound is the largest of the other lanes' maxima,
    another entry of the row: the second largest itself unless both top entries
    fall in one lane (exact below 16 entries). A NaN may or may not propagate;
    NaN rows are caught by ``_write_row``.
    """
    a = x[r, 0]
    b = _like_row(x, -np.inf)
    if k < 16:
        for j in range(1, k):
            a, b = _push(a, b, x[r, j])
        return a, b
    m1, m2 = x[r, 1], x[r, 2]
    m3, m4 = x[r, 3], x[r, 4]
    m5, m6 = x[r, 5], x[r, 6]
    m7 = x[r, 7]
    j = 8
    while j + 8 <= k:
        a = _larger(x[r, j], a)
        m1 = _larger(x[r, j + 1], m1)
        m2 = _larger(x[r, j + 2], m2)
        m3 = _larger(x[r, j + 3], m3)
        m4 = _larger(x[r, j + 4], m4)
        m5 = _larger(x[r, j + 5], m5)
        m6 = _larger(x[r, j + 6], m6)
        m7 = _larger(x[r, j + 7], m7)
        j += 8
    for m in (m1, m2, m3, m4, m5, m6, m7):
        a, b = _push(a, b, m)
    while j < k:
        a, b = _push(a, b, x[r, j])
        j += 1
    return a, b


def _bitcast(targets):
    """An intrinsic that reads a scalar's bits as the type ``targets`` maps its type to."""

    @intrinsic
    def bitcast(typingctx, value):
        target = targets[value]

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(target))

        return target(value), codegen

    return bitcast


# A float's bits as a signed integer of its width, and back.
_bits_of = _bitcast({types.float32: types.int32, types.float64: types.int64})
_float_from_bits = _bitcast({types.int32: types.float32, types.int64: types.float64})


def _bits_like(bits, value):
    """``value`` as an integer of ``bits``'s type (numba only)."""
    raise NotImplementedError("compiled code only")


@overload(_bits_like)
def _bits_like_for(bits, value):
    integer = np.int32 if bits == types.int32 else np.int64

    def cast(bits, value):
        return integer(value)

    return cast


# A float max reduction does not vectorise in LLVM (numba cannot give the function
# the no-NaN attribute it needs); an integer one does. So the row maxima here are
# taken over integer keys of the floats' bits, ordered as the floats: a
# non-negative float's pattern as it is, a negative one's magnitude bits flipped.


@njit(cache=True, nogil=True)
def _key_max(x, keep, r, k, absolute):
    """``max_{j<k} x[r, j]`` (``k ≥ 1``) or, with ``absolute``, ``max_{j<k} |x[r, j]|``
    over the entries that ``keep`` (booleans like ``x``, or None) keeps; the least
    value (-inf, or 0 with ``absolute``) when it keeps none (a NaN of either sign
    wins the latter; a positive NaN the former, a negative one loses: NaN rows are
    caught by the solver)."""
    magnitude = ~_bits_of(_like_row(x, -0.0))  # every bit but the sign's
    shift = _bits_of(_like_row(x, 0.0)) + x.itemsize * 8 - 1  # to the sign bit
    low = _bits_of(_like_row(x, -np.inf))
    least = magnitude & 0 if absolute else low ^ ((low >> shift) & magnitude)  # of 0, -inf
    m = ~magnitude  # the least key
    for j in range(k):
        bits = _bits_of(x[r, j])
        if absolute:  # loop invariant: LLVM moves it out of the loop
            key = bits & magnitude
        else:
            key = bits ^ ((bits >> shift) & magnitude)
        if keep is not None:  # compiled away without a mask; with one, a select
            kept = keep[r, j]
            key = key if kept else least
        m = key if key > m else m
    if not absolute:
        m = m ^ ((m >> shift) & magnitude)  # the key's own inverse
    # numba widens int32 arithmetic to int64: back to the row's width
    return _float_from_bits(_bits_like(_bits_of(x[r, 0]), m))


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _kept_sum(x, keep, r, inverse):
    """``Σ_j x[r, j] · inverse`` and ``K`` over the entries that ``keep`` keeps, in float64."""
    total = 0.0
    if keep is None:
        for j in range(x.shape[1]):
            total += x[r, j] * inverse
        return total, x.shape[1]
    k = 0
    for j in range(x.shape[1]):
        v = x[r, j]  # both loads unconditional (vectorised)
        kept = keep[r, j]
        total += v * inverse if kept else 0.0
        k += kept
    return total, k


@njit(cache=True, nogil=True)
def _sum_in_units(x, keep, r):
    """``(total, K, unit)``: the kept entries' sum is ``unit · total``, ``total`` in float64
    and ``unit`` 1 unless that sum overflows float64, then ``SUM_UNIT``, as
    :data:`sparsegen._projection.SUM_UNIT` says why (an infinite score stays one in any
    unit and decides the sum, which partial sums that overflowed both ways made NaN)."""
    total, k = _kept_sum(x, keep, r, 1.0)
    if k == 0 or -np.inf < total < np.inf:
        return total, k, 1.0
    total, k = _kept_sum(x, keep, r, 1.0 / SUM_UNIT)
    return total, k, SUM_UNIT


@njit(cache=True, nogil=True)
def _kept_sums_block(x, keep, total, count, unit, lo, hi):
    for r in range(lo, hi):
        total[r], count[r], unit[r] = _sum_in_units(x, keep, r)


@njit(cache=True, nogil=True)
def _kept_sums_serial(x, keep, total, count, unit):
    _kept_sums_block(x, keep, total, count, unit, 0, x.shape[0])


@njit(cache=True, nogil=True, parallel=True)
def _kept_sums_parallel(x, keep, total, count, unit, n_blocks):
    n = x.shape[0]
    for b in prange(n_blocks):
        _kept_sums_block(x, keep, total, count, unit, b * n // n_blocks, (b + 1) * n // n_blocks)


def kept_sums_rows(
    x: np.ndarray,
    keep: np.ndarray | None,
    total: np.ndarray,
    count: np.ndarray,
    unit: np.ndarray,
    n_threads: int,
) -> None:
    """Each row's sum of its kept entries as :func:`_sum_in_units` takes it (``unit ·
    total``), and their count: what sparsecone's and sparsehourglass's scale needs of the
    scores, in one read (two where a float64 sum overflows)."""
    n_blocks = _blocks(x.shape[0], x.size, n_threads)
    _launch(_kept_sums_parallel, _kept_sums_serial, n_blocks, x, keep, total, count, unit)


@njit(cache=True, nogil=True, error_model="numpy")
def _cone_scale(x, keep, r, q, mirror):
    """Sparsecone's ``α = (1 + Kq)/(Σ_j x[r, j] + Kq)``, NaN where that denominator is ≤ 0,
    or with ``mirror`` sparsehourglass's ``α̂ = (1 + Kq)/(|Σ_j x[r, j]| + Kq)``.

    The sum is taken in float64, over the kept entries only, and ``K`` counts
    them; a fully masked row gets 1 (its output is zeros whatever the scale).
    A sum that overflows float64 is taken again in units of ``SUM_UNIT``
    (:func:`_sum_in_units`), and the scale from ``Σ x/unit``: tiny, but
    not 0 (an infinite score stays one, and decides the sum whatever order the partial
    sums overflowed in).
    """
    total, k, unit = _sum_in_units(x, keep, r)
    if k == 0:
        return 1.0
    if mirror:
        total = abs(total)
    kq = k * q
    if kq < 1e300:  # one division (the common case); mirror: ≥ Kq > 0, an underflow
        numerator, denominator = (1.0 + kq) / unit, total + kq / unit  # to 0: inf, the cap
    elif kq < np.inf:  # divided through by Kq, so that 1 + Kq cannot overflow
        numerator, denominator = 1.0 + 1.0 / kq, total * (unit / kq) + 1.0
    elif kq == np.inf:  # Kq overflowed (q near its float limit): the limit, sparsemax
        return 1.0
    else:  # a NaN q (a device's invalid q: its slice is NaN, as in the torch code)
        return np.nan
    if mirror or denominator > 0:
        return numerator / denominator
    return np.nan


@njit(cache=True, nogil=True)
def _scale_of_row(x, keep, r, scale, scale_from, q):
    """Row ``r``'s scale, capped: read from ``scale[r]``, or first computed into it (from
    the entries that ``keep`` keeps and ``q[r]``) as ``scale_from`` says."""
    if scale_from != SCALE_GIVEN:  # one call site: inlined twice, it slows the solver
        scale[r] = _cone_scale(x, keep, r, q[r], scale_from == SCALE_HOURGLASS)
    return _capped(x, scale[r])


@njit(cache=True, nogil=True, inline="always")
def _scaled_gap(x, r, j, shift, s):
    """``s (x[r, j] − shift)``, the projected score, in the row's dtype.

    The one rounding that the Newton passes, the output and the support share:
    an entry is in the support exactly when its written output is positive,
    also when rounding puts it at τ. Scaled before any sum, so that a tiny
    scale (sparsecone's α on huge scores) never lets a sum of gaps overflow.
    """
    return s * (x[r, j] - shift)


@njit(cache=True, nogil=True, fastmath={"reassoc"}, error_model="numpy")
def _sum_above(x, r, top, scale, tau):
    """Sum and count of ``v = scale (x[r] − top)`` over ``v > tau`` (vectorised).

    Each ``v`` in the row's dtype (:func:`_scaled_gap`), summed in float64: a float32 sum
    over a large flat support (thousands of equal gaps) drifts, and τ's error is the sum's
    (a float32 row with 32,768 tied entries in its support would sum to 1.047).
    """
    s = _like_row(x, scale)
    threshold = _like_row(x, tau)
    shift = _like_row(x, top)
    total = 0.0
    count = 0
    for j in range(x.shape[1]):
        v = _scaled_gap(x, r, j, shift, s)
        above = v > threshold
        total += np.float64(v) if above else 0.0
        count += above
    return total, count


@njit(cache=True, nogil=True, fastmath={"reassoc"}, error_model="numpy")
def _sum_above_list(values, n, tau):
    """Sum and count of ``values[:n]`` over ``values > tau`` (vectorised)."""
    total = 0.0
    count = 0
    for j in range(n):
        v = values[j]
        above = v > tau
        total += v if above else 0.0
        count += above
    return total, count


@njit(cache=True, nogil=True, inline="always")
def _write_row(x, r, top, scale, tau, out):
    """Write ``[scale (x[r] − top) − τ]_+`` in the row's dtype; returns how many entries
    are positive, or -1 if the row holds a NaN."""
    zero = _like_row(out, 0.0)  # float32 rows are computed in float32
    s = _like_row(out, scale)
    t = _like_row(out, tau)
    m = _like_row(out, top)
    valid = 0
    positive = 0
    for j in range(x.shape[1]):
        d = _scaled_gap(x, r, j, m, s) - t
        above = d > 0
        out[r, j] = d if above else zero
        positive += above
        valid += x[r, j] == x[r, j]
    return positive if valid == x.shape[1] else -1


@njit(cache=True, nogil=True, inline="always")
def _finish_row(x, r, top, scale, shifted_tau, out, tau_out, support_out):
    """Write a row's output, its threshold (unshifted) and support size: the count of
    positive outputs, whatever the Newton passes counted.

    A row found to hold a NaN gets support -1: ``_fill_special_rows`` redoes it by
    the special-value rules after the loop (a call here would slow the loop).
    """
    support_out[r] = _write_row(x, r, top, scale, shifted_tau, out)
    tau_out[r] = shifted_tau + scale * top


@njit(cache=True, nogil=True, inline="always")
def _newton_step(total, n, tau, count):
    """Newton's (Michelot's) step ``τ = (Σ − 1)/n`` from the sum and count ``n`` of the gaps
    above ``tau``, taken only where the support shrank (``n < count``): ``(τ, count,
    moved)``. A search stops at the first step that does not move, keeping the τ of the
    last step that shrank the support, so K + 1 steps always suffice."""
    if n < count:
        return (total - 1.0) / n, n, True
    return tau, count, False


@njit(cache=True, nogil=True)
def _newton_start(top, second, scale):
    """A lower bound on τ for the scores shifted by their maximum: the threshold of the
    top two, ``(v₁ + v₂ − 1)/2`` with ``v₁ = 0`` (τ is the largest of the top-k
    thresholds ``(Σ_{i≤k} v_(i) − 1)/k``), or −1 (k = 1) where that is lower (or NaN).
    At least −1 and at most τ, so Newton takes no more passes from it than from −1,
    and usually fewer."""
    start = (scale * (np.float64(second) - np.float64(top)) - 1.0) / 2.0
    return start if start > -1.0 else -1.0


@njit(cache=True, nogil=True, error_model="numpy")
def _project_rows_in_lockstep(x, scale, out, tau_out, support_out, lo, hi, state, counts, status):
    """Short rows: Newton's method on ``ROW_BLOCK`` rows at a time.

    For each row the scores are shifted by their maximum, ``v = scale (y − top)``,
    so ``τ ∈ [−1, 0)``. Newton's method on ``Σ_j [v_j − τ]_+ = 1`` from a lower
    bound (:func:`_newton_start`, found in the max pass) makes each step one
    vectorised pass; τ rises monotonically and is exact once the support stops
    shrinking. A row stops there, keeping the τ of its last step that shrank the support,
    as the Triton kernels do: rounding at a tie can make the support grow back (4, 1, 4,
    1, … entries), so a rule that waited for a size to repeat would run K + 1 steps and
    keep whichever τ came last, an answer that the row's length (even or odd) decided.
    The rows of a block take their steps in turn, so that their independent
    dependency chains overlap. Each step that is not the last shrinks the
    support, so K + 1 steps always suffice (3 to 7 is typical).

    Each row's scale is read from ``scale`` (capped), computed beforehand where it
    is a cone's (:func:`_cone_scales`): the cone's code inside this loop, even on a
    branch not taken, doubles the time of short rows.
    """
    tops, taus, scales = state[0], state[1], state[2]
    for r0 in range(lo, hi, ROW_BLOCK):
        rows = min(ROW_BLOCK, hi - r0)
        for i in range(rows):
            scales[i] = _capped(x, scale[r0 + i])
            top, second = _row_top_two(x, r0 + i, x.shape[1])
            tops[i] = top
            taus[i] = _newton_start(top, second, scales[i])
            counts[i] = x.shape[1] + 1
            special = not (-np.inf < tops[i] < np.inf) or scales[i] != scales[i]
            status[i] = SPECIAL if special else MOVING
        for _ in range(x.shape[1] + 1):
            moving = 0
            for i in range(rows):
                if status[i] != MOVING:
                    continue
                total, n = _sum_above(x, r0 + i, tops[i], scales[i], taus[i])
                taus[i], counts[i], moved = _newton_step(total, n, taus[i], counts[i])
                if moved:
                    moving += 1
                else:
                    status[i] = CONVERGED
            if moving == 0:
                break
        for i in range(rows):
            r = r0 + i
            if status[i] == SPECIAL:
                support_out[r] = -1
                continue
            _finish_row(x, r, tops[i], scales[i], taus[i], out, tau_out, support_out)


@njit(cache=True, nogil=True, error_model="numpy")
def _sampled_threshold(x, r, top, scale, sample):
    """An estimate of row ``r``'s τ from ``m = len(sample)`` of its entries, evenly spaced,
    each standing for ``K/m``: the root of ``Σ_sample [v − τ]_+ = m/K``, solved as the
    candidates are (:func:`_solve_candidates`) on the gaps times ``K/m`` from −K/m (−1 in
    the gaps' unit), and scaled back (``sample`` is overwritten with them). Not a bound: it may fall
    on either side; -inf where no sampled gap is above −1 (a step by an empty count)."""
    k = x.shape[1]
    m = min(sample.shape[0], k)
    s = _like_row(x, scale)
    shift = _like_row(x, top)
    for i in range(m):
        sample[i] = np.float64(_scaled_gap(x, r, i * k // m, shift, s)) * (k / m)
    return _solve_candidates(sample, m, -k / m) * (m / k)


@njit(cache=True, nogil=True, error_model="numpy")
def _project_row_in_place(x, r, scale, out, tau_out, support_out, values, index):
    """One row by Newton's method on the row itself (the lockstep solver for a single row).

    A flat row (most entries within ``1/scale`` of the maximum, as sum-normalization++
    and sparsegen-lin at λ ≪ 0 make) takes a dozen passes from the top two's bound. A
    non-empty ``values`` (scratch, with ``index``) buys a better start: one pass at the
    estimate of τ from evenly spaced entries (:func:`_sampled_threshold`), and the Newton
    step from there, which is below τ from either side (``f(τ) = Σ [v − τ]_+ − 1`` is
    convex, so its tangent's root at a point above τ is too). The gaps above that bound,
    usually few more than the support, are then copied out (:func:`_gaps_above`): the
    steps from the bound only ever sum gaps above it, so they take the same steps on the
    copy as on the row (the sums in another order), a pass each saved. A row whose gaps
    above the bound overflow ``values`` takes its steps on the row itself.
    """
    top, second = _row_top_two(x, r, x.shape[1])
    if not (-np.inf < top < np.inf) or scale != scale:
        support_out[r] = -1
        return
    tau = _newton_start(top, second, scale)
    if values.shape[0] > 0:
        guess = _sampled_threshold(x, r, top, scale, values)
        copied = 0
        if guess > tau:
            total, n = _sum_above(x, r, top, scale, guess)
            if n > 0:
                tau = max(tau, (total - 1.0) / n)
            if _copy_pays(n, values.shape[0], x.shape[1]):
                copied = _gaps_above(x, r, top, scale, tau, values, index)
        if copied > 0:
            tau = _solve_candidates(values, copied, tau)
            _finish_row(x, r, top, scale, tau, out, tau_out, support_out)
            return
    count = x.shape[1] + 1
    for _ in range(x.shape[1] + 1):
        total, n = _sum_above(x, r, top, scale, tau)
        tau, count, moved = _newton_step(total, n, tau, count)
        if not moved:
            break
    _finish_row(x, r, top, scale, tau, out, tau_out, support_out)


@njit(cache=True, nogil=True, error_model="numpy")
def _copy_candidates(x, keep, r, lo, hi, offset, absolute, values, index, n, top):
    """Append ``x[r, lo:hi]``'s kept entries at or above ``top + offset`` (``|x|`` with
    ``absolute``) to ``values[:n]``, their positions to ``index[:n]``.

    At or above, so that the maximum is kept when ``offset`` is lost to
    rounding (a huge scale). Returns the new count (-1 when ``values`` is full,
    -2 at a NaN) and the running maximum (which only a seed below the row's
    maximum sees rise).
    """
    floor = top + offset
    for i in range(lo, hi):
        if keep is not None and not keep[r, i]:
            continue
        v = x[r, i]
        key = abs(v) if absolute else v
        if not key < floor:
            if v != v:
                return -2, top
            if n == values.shape[0]:
                return -1, top
            values[n] = v
            index[n] = i
            n += 1
            if key > top:
                top = key
                floor = top + offset
    return n, top


@njit(cache=True, nogil=True, inline="always")
def _count_at_or_above(x, r, lo, hi, floor, absolute):
    """How many of ``x[r, lo:hi]`` (``|x|`` with ``absolute``) are not below ``floor``
    (a NaN counts): vectorised."""
    hits = 0
    for j in range(lo, hi):
        v = x[r, j]
        if absolute:  # loop invariant: LLVM moves it out of the loop
            v = abs(v)
        hits += 0 if v < floor else 1
    return hits


@njit(cache=True, nogil=True, error_model="numpy")
def _candidates(x, keep, r, top, offset, absolute, values, index):
    """In ``values`` and ``index``, row ``r``'s kept entries at or above ``top + offset``
    (``|x|`` with ``absolute``) and their positions; returns the running maximum and
    their count.

    ``top`` is the row's maximum (of ``|x|`` with ``absolute``), or a seed below
    it (the maximum of a prefix), which rises as larger entries turn up, the
    floor with it; sparsemax's floor ``top − 1/scale`` (``offset = −1/scale``)
    bounds its support. One pass: each chunk of
    ``CHUNK`` entries is first counted against the floor in one vectorised
    loop, and only a chunk with hits is looked at in blocks of 8, whose kept
    hits are copied (the count ignores the mask: a masked entry above the
    floor costs a closer look, which is rare, and a select in the count would
    slow every chunk). Returns ``n = -1`` when more candidates than ``values`` holds
    turn up (a nearly flat row) and ``n = -2`` at a NaN.
    """
    k = x.shape[1]
    # In the row's dtype: an entry at or above the float64 floor is at or above its
    # rounding too (the nearest float, above or below, is not above the entry).
    floor = _like_row(x, top + offset)
    n = 0
    j = 0
    while j + CHUNK <= k:
        if _count_at_or_above(x, r, j, j + CHUNK, floor, absolute):
            for b in range(j, j + CHUNK, 8):
                if _count_at_or_above(x, r, b, b + 8, floor, absolute):
                    n, top = _copy_candidates(
                        x, keep, r, b, b + 8, offset, absolute, values, index, n, top
                    )
                    if n < 0:
                        return np.float64(top), n
                    floor = _like_row(x, top + offset)
        j += CHUNK
    n, top = _copy_candidates(x, keep, r, j, k, offset, absolute, values, index, n, top)
    return np.float64(top), n


@njit(cache=True, nogil=True, inline="always")
def _copy_pays(above_guess, capacity, k):
    """Whether a flat row's gaps above its bound are copied out, from the ``above_guess``
    gaps above the sampled guess (those above the bound, below the guess, are more): where
    they fit in ``capacity`` and are under ``1/COPIED_DENSITY`` of the row's ``k``; denser,
    the copy costs more passes' time than it saves."""
    return above_guess < capacity and above_guess * COPIED_DENSITY < k


@njit(cache=True, nogil=True, error_model="numpy")
def _gaps_above(x, r, top, scale, bound, values, index):
    """Row ``r``'s gaps ``v = scale (x[r] − top)`` above ``bound`` (−1 ≤ bound < 0), as
    :func:`_sum_above` rounds them, into ``values``: their count, or a negative one where
    more than ``values`` holds (or a NaN turns up). The entries are found by
    :func:`_candidates` against a floor a little lower than the bound in scores, so that
    the copy holds every gap the roundings put above it (a few below it too, which no
    Newton step from the bound counts)."""
    offset = bound * (1.0 + 2.0**-20) / scale
    _, n = _candidates(x, None, r, top, offset, False, values, index)
    s = _like_row(x, scale)
    shift = _like_row(x, top)
    for i in range(n):
        values[i] = _scaled_gap(x, r, index[i], shift, s)
    return n


@njit(cache=True, nogil=True, error_model="numpy")
def _solve_candidates(values, n, start):
    """Newton's method on the candidates (shifted so that their maximum is 0) from
    ``start``, a lower bound on τ (−1 for them): the threshold τ (the support size is
    counted where the output is written), kept from the last step that shrank the support;
    n + 1 steps always suffice, as in the lockstep."""
    tau = start
    count = n + 1
    for _ in range(n + 1):
        total, above = _sum_above_list(values, n, tau)
        tau, count, moved = _newton_step(total, above, tau, count)
        if not moved:
            break
    return tau


@njit(cache=True, nogil=True)
def _scatter_support(values, index, n, tau, out, r):
    """Row ``r`` of ``out``: zeros, and ``values − τ`` at the candidates above ``τ``;
    returns how many of the written entries are positive (the support size, also
    where rounding puts candidates at τ)."""
    zero = _like_row(out, 0.0)
    for j in range(out.shape[1]):
        out[r, j] = zero
    positive = 0
    for i in range(n):
        v = _like_row(out, values[i] - tau)
        if v > 0:
            out[r, index[i]] = v
            positive += 1
    return positive


@njit(cache=True, nogil=True, error_model="numpy")
def _looks_flat(x, r, seed, scale):
    """Whether more than ``1/FLAT_DENSITY`` of row ``r``'s first ``FLAT_SAMPLE`` entries lie
    within ``1/scale`` of ``seed`` (the maximum of a prefix at least as long), an estimate
    of its candidates' density: only the speed depends on it (masked entries count too)."""
    length = min(FLAT_SAMPLE, x.shape[1])
    floor = _like_row(x, seed - 1.0 / scale)
    return _count_at_or_above(x, r, 0, length, floor, False) * FLAT_DENSITY > length


@njit(cache=True, nogil=True, error_model="numpy")
def _project_long_row(x, keep, r, scale, out, tau_out, support_out, values, index, buffer):
    """Long rows: copy out the few candidates in one pass, Newton on them, then write
    the row's zeros and scatter the support (the row is not read again).

    A row that looks flat (:func:`_looks_flat`), or turns out to have more candidates
    than ``values`` holds, is solved in place (a masked one in ``buffer``, with -inf in
    its masked entries).
    """
    k = x.shape[1]
    seed = _key_max(x, keep, r, seed_length(k), False)
    top, n = seed, -1  # (-1: too many candidates, as a flat row has)
    if not _looks_flat(x, r, seed, scale):
        top, n = _candidates(x, keep, r, seed, -1.0 / scale, False, values, index)
    if n == -1:
        if keep is None:
            _project_row_in_place(x, r, scale, out, tau_out, support_out, values, index)
        else:
            fill_masked(x[r : r + 1], keep[r : r + 1], -np.inf, buffer)
            rows = slice(r, r + 1)
            _project_row_in_place(
                buffer, 0, scale, out[rows], tau_out[rows], support_out[rows], values, index
            )
        return
    if n < 0 or not (-np.inf < top < np.inf) or scale != scale:
        support_out[r] = -1
        return
    for i in range(n):
        values[i] = scale * (values[i] - top)
    tau = _solve_candidates(values, n, -1.0)
    support_out[r] = _scatter_support(values, index, n, tau, out, r)
    tau_out[r] = tau + scale * top


# Short and long rows have entry points of their own, so that a first call
# compiles only the path it takes, not both.


@njit(cache=True, nogil=True)
def _fill_special_rows(x, keep, scale, out, tau, support, lo, hi):
    for r in range(lo, hi):
        if support[r] < 0:
            tau[r], support[r] = _fill_special_row(x, keep, r, scale[r], out)


@njit(cache=True, nogil=True)
def _lockstep_buffers():
    state = np.empty((3, ROW_BLOCK), dtype=np.float64)
    return state, np.empty(ROW_BLOCK, dtype=np.int64), np.empty(ROW_BLOCK, dtype=np.int8)


@njit(cache=True, nogil=True)
def _cone_scales(x, scale, scale_from, q, lo, hi):
    """Rows ``lo:hi``'s sparsecone or sparsehourglass scale into ``scale``, as
    ``scale_from`` says (:func:`_cone_scale`; unmasked rows)."""
    for r in range(lo, hi):
        scale[r] = _cone_scale(x, None, r, q[r], scale_from == SCALE_HOURGLASS)


@njit(cache=True, nogil=True, error_model="numpy")
def _copy_kept(x, keep, lo, hi, buffer, scale, scale_from, q):
    """Rows ``lo:hi`` into ``buffer[:hi - lo]`` with -inf in their masked entries (a
    vectorised select), their scales first computed from the kept entries unless
    given. One call a block: a call a row would cost more than the copy."""
    minus_inf = _like_row(x, -np.inf)
    for r in range(lo, hi):
        if scale_from != SCALE_GIVEN:
            scale[r] = _cone_scale(x, keep, r, q[r], scale_from == SCALE_HOURGLASS)
        for j in range(x.shape[1]):
            v = x[r, j]  # both loads unconditional, so that the choice is a select
            kept = keep[r, j]
            buffer[r - lo, j] = v if kept else minus_inf


@njit(cache=True, nogil=True)
def _project_short_block(x, keep, scale, scale_from, q, out, tau, support, lo, hi):
    state, counts, status = _lockstep_buffers()
    if keep is None:
        if scale_from != SCALE_GIVEN:
            _cone_scales(x, scale, scale_from, q, lo, hi)
        _project_rows_in_lockstep(x, scale, out, tau, support, lo, hi, state, counts, status)
    else:  # each block of rows is copied, masked, and solved from the copy
        buffer = np.empty((ROW_BLOCK, x.shape[1]), dtype=x.dtype)
        for r0 in range(lo, hi, ROW_BLOCK):
            r1 = min(r0 + ROW_BLOCK, hi)
            _copy_kept(x, keep, r0, r1, buffer, scale, scale_from, q)
            _project_rows_in_lockstep(  # the scales computed by the copy
                buffer[: r1 - r0],
                scale[r0:r1],
                out[r0:r1],
                tau[r0:r1],
                support[r0:r1],
                0,
                r1 - r0,
                state,
                counts,
                status,
            )
    _fill_special_rows(x, keep, scale, out, tau, support, lo, hi)


@njit(cache=True, nogil=True)
def _project_long_block(x, keep, scale, scale_from, q, out, tau, support, lo, hi):
    values = np.empty(candidate_capacity(x.shape[1]), dtype=np.float64)
    index = np.empty(values.shape[0], dtype=np.int64)
    buffer = np.empty((0 if keep is None else 1, x.shape[1]), dtype=x.dtype)
    for r in range(lo, hi):
        scale_r = _scale_of_row(x, keep, r, scale, scale_from, q)
        if keep is not None and seed_length(x.shape[1]) == x.shape[1]:
            # The whole row is the seed, and a masked max over it costs more than a
            # masked copy that stays in cache.
            fill_masked(x[r : r + 1], keep[r : r + 1], -np.inf, buffer)
            rows = slice(r, r + 1)
            _project_long_row(
                buffer, None, 0, scale_r, out[rows], tau[rows], support[rows], values, index, buffer
            )
        else:  # the mask is read where the row is
            _project_long_row(x, keep, r, scale_r, out, tau, support, values, index, buffer)
    _fill_special_rows(x, keep, scale, out, tau, support, lo, hi)


@njit(cache=True, nogil=True)
def _project_short_rows_serial(x, keep, scale, scale_from, q, out, tau, support):
    _project_short_block(x, keep, scale, scale_from, q, out, tau, support, 0, x.shape[0])


@njit(cache=True, nogil=True)
def _project_long_rows_serial(x, keep, scale, scale_from, q, out, tau, support):
    _project_long_block(x, keep, scale, scale_from, q, out, tau, support, 0, x.shape[0])


@njit(cache=True, nogil=True, parallel=True)
def _project_short_rows_parallel(x, keep, scale, scale_from, q, out, tau, support, n_blocks):
    n = x.shape[0]
    for b in prange(n_blocks):
        lo, hi = b * n // n_blocks, (b + 1) * n // n_blocks
        _project_short_block(x, keep, scale, scale_from, q, out, tau, support, lo, hi)


@njit(cache=True, nogil=True, parallel=True)
def _project_long_rows_parallel(x, keep, scale, scale_from, q, out, tau, support, n_blocks):
    n = x.shape[0]
    for b in prange(n_blocks):
        lo, hi = b * n // n_blocks, (b + 1) * n // n_blocks
        _project_long_block(x, keep, scale, scale_from, q, out, tau, support, lo, hi)


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _support_sum(p, g, r):
    """``Σ_{j∈S} g[r, j]`` and ``|S|`` with ``S = {p[r] > 0}`` (vectorised), summed in
    float64 as :func:`_sum_above` sums: the mean of a large support's gradient in float32
    would drift alike."""
    total = 0.0
    count = 0
    for j in range(p.shape[1]):
        above = p[r, j] > 0
        total += np.float64(g[r, j]) if above else 0.0
        count += above
    return total, count


@njit(cache=True, nogil=True, inline="always")
def _count_positive(p, r, lo, hi):
    """How many of ``p[r, lo:hi]`` are positive: vectorised."""
    hits = 0
    for j in range(lo, hi):
        hits += 1 if p[r, j] > 0 else 0
    return hits


@njit(cache=True, nogil=True)
def _support_positions(p, r, index):
    """The positions of row ``r``'s positive entries, into ``index``; returns their count,
    or -1 (``index`` not written past its end) when there are more than it holds.

    Chunks of ``CHUNK`` entries are counted first, as in :func:`_candidates`,
    so that a small support costs one vectorised read of the row; only a chunk
    with hits is looked at entry by entry, and there each write is bounded.
    """
    k = p.shape[1]
    n = 0
    j = 0
    while j < k:
        end = j + CHUNK
        if end > k or _count_positive(p, r, j, end):
            for i in range(j, min(end, k)):
                if p[r, i] > 0:
                    if n == index.shape[0]:
                        return -1
                    index[n] = i
                    n += 1
        j = end
    return n


@njit(cache=True, nogil=True)
def _backward_sparse_row(p, g, r, scale, grad, index, moment):
    """A long row's small support: found in one read of ``p``, ``g`` read only there,
    zeros written (one pass fewer than the dense row's). False, with nothing written,
    when the support does not fit in ``index``. With a ``moment`` to fill, as
    :func:`_backward_moment_row`."""
    n = _support_positions(p, r, index)
    if n < 0:
        return False
    total = 0.0
    for i in range(n):
        total += g[r, index[i]]
    mean = total / max(n, 1)
    zero = _like_row(grad, 0.0)
    for j in range(p.shape[1]):
        grad[r, j] = zero
    usable = _usable(scale) or not moment.shape[0]  # (a plain VJP's scale is given)
    for i in range(n):
        u = g[r, index[i]] - mean
        grad[r, index[i]] = _like_row(grad, scale * u if usable else _limit(u, scale))
    if moment.shape[0]:
        moment[r] = _sparse_moment(p, g, r, index, n, mean) if usable else 0.0
    return True


@njit(cache=True, nogil=True)
def _sparse_moment(p, g, r, index, n, mean):
    """``Σ_S u_j (p_j − max p)`` over a support held in ``index[:n]``. Apart from
    :func:`_backward_sparse_row`: written there, it slowed that row's zeros (LLVM)."""
    top = 0.0
    for i in range(n):
        top = max(top, p[r, index[i]])
    summed = 0.0
    for i in range(n):
        summed += (g[r, index[i]] - mean) * (p[r, index[i]] - top)
    return summed


@njit(cache=True, nogil=True, inline="always")
def _usable(scale):
    """Whether a scale enters the formulas: finite and not 0 (else its row takes the
    first-order limit, :func:`_limit`)."""
    return np.isfinite(scale) and scale != 0


@njit(cache=True, nogil=True, inline="always")
def _limit(u, scale):
    """``u · scale`` with ``0 · inf`` and ``0 · NaN`` taken as 0: the VJP's first-order
    limit in a row whose scale is 0, inf or NaN (``u · 0`` first keeps a non-finite ``u``
    NaN, as ``c·u`` with ``c = 0`` would)."""
    v = u * scale
    return u * 0.0 + (0.0 if np.isnan(v) else v)


@njit(cache=True, nogil=True, inline="always")
def _backward_dense_row(p, g, r, scale, grad):
    total, count = _support_sum(p, g, r)
    mean = total / max(count, 1)
    zero = _like_row(grad, 0.0)  # float32 rows are computed in float32
    c = _like_row(grad, scale)
    m = _like_row(grad, mean)
    for j in range(p.shape[1]):
        grad[r, j] = c * (g[r, j] - m) if p[r, j] > 0 else zero


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _backward_moment_row(p, g, r, scale, grad):
    """The dense row's VJP for a usable scale that takes a gradient: writes ``c·u``
    (``u = s ⊙ (g − mean_S g)``) and returns ``Σ_S u_j (p_j − max p)``, which is
    ``c Σ_S u_j z_j`` (on ``S``, ``c z_j = p_j + τ``, and ``Σ_S u_j = 0``)."""
    total, count = _support_sum(p, g, r)
    m = _like_row(grad, total / max(count, 1))
    zero = _like_row(grad, 0.0)
    c = _like_row(grad, scale)
    top = _key_max(p, None, r, p.shape[1], False)  # (a vectorised max)
    summed = 0.0
    for j in range(p.shape[1]):
        u = g[r, j] - m if p[r, j] > 0 else zero
        grad[r, j] = c * u
        summed += np.float64(u * (p[r, j] - top))
    return summed if count else 0.0  # (a NaN row's: 0 · NaN)


@njit(cache=True, nogil=True)
def _backward_limit_row(p, g, r, scale, grad):
    """The VJP's first-order limit in a row whose scale is 0, inf or NaN (:func:`_limit`).
    Apart from :func:`_backward_moment_row`: a branch to it there, even one not taken,
    keeps LLVM from vectorising that row's loops."""
    total, count = _support_sum(p, g, r)
    m = _like_row(grad, total / max(count, 1))
    zero = _like_row(grad, 0.0)
    s = _like_row(grad, scale)
    for j in range(p.shape[1]):
        grad[r, j] = _limit(g[r, j] - m if p[r, j] > 0 else zero, s)


@njit(cache=True, nogil=True)
def _backward_short_block(p, g, scale, support, grad, moment, lo, hi):
    # (the branches written here: numba's inlining of a function holding them, or a call
    # per row, costs more than a short row's backward)
    for r in range(lo, hi):
        c = scale[r]
        if not moment.shape[0]:
            _backward_dense_row(p, g, r, c, grad)
        elif _usable(c):
            moment[r] = _backward_moment_row(p, g, r, c, grad)
        else:
            _backward_limit_row(p, g, r, c, grad)
            moment[r] = 0.0


@njit(cache=True, nogil=True)
def _backward_long_block(p, g, scale, support, grad, moment, lo, hi):
    index = np.empty(p.shape[1] // 16, dtype=np.int64)
    for r in range(lo, hi):
        small = support[r] < index.shape[0]
        if not (small and _backward_sparse_row(p, g, r, scale[r], grad, index, moment)):
            _backward_short_block(p, g, scale, support, grad, moment, r, r + 1)


# Entry points per row length, as for the forward: a first backward compiles only
# the path it takes.


@njit(cache=True, nogil=True)
def _backward_short_rows_serial(p, g, scale, support, grad, moment):
    _backward_short_block(p, g, scale, support, grad, moment, 0, p.shape[0])


@njit(cache=True, nogil=True)
def _backward_long_rows_serial(p, g, scale, support, grad, moment):
    _backward_long_block(p, g, scale, support, grad, moment, 0, p.shape[0])


@njit(cache=True, nogil=True, parallel=True)
def _backward_short_rows_parallel(p, g, scale, support, grad, moment, n_blocks):
    n = p.shape[0]
    for b in prange(n_blocks):
        lo, hi = b * n // n_blocks, (b + 1) * n // n_blocks
        _backward_short_block(p, g, scale, support, grad, moment, lo, hi)


@njit(cache=True, nogil=True, parallel=True)
def _backward_long_rows_parallel(p, g, scale, support, grad, moment, n_blocks):
    n = p.shape[0]
    for b in prange(n_blocks):
        lo, hi = b * n // n_blocks, (b + 1) * n // n_blocks
        _backward_long_block(p, g, scale, support, grad, moment, lo, hi)


@njit(cache=True, nogil=True)
def fill_masked(x, keep, value, out):
    """``out = x`` where ``keep``, else ``value`` (2-D C-contiguous, one vectorised select
    pass: torch's ``masked_fill`` reads the mask element by element, far costlier than
    an addition)."""
    fill = _like_row(x, value)
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            v = x[r, j]  # both loads unconditional, so that the choice is a select
            kept = keep[r, j]
            out[r, j] = v if kept else fill


@njit(cache=True, nogil=True)
def add_where_kept(out, keep, per_row):
    """``out += per_row`` (one value a row) where ``keep``, in place; a select pass as in
    :func:`fill_masked` (torch's ``where`` on a bool mask costs ten additions)."""
    zero = _like_row(out, 0.0)
    for r in range(out.shape[0]):
        add = _like_row(out, per_row[r])
        for j in range(out.shape[1]):
            kept = keep[r, j]
            out[r, j] += add if kept else zero


_numba_threads = threading.local()  # the count last given to numba.set_num_threads


@njit(cache=True, nogil=True)
def max_and_write_rows(x, out):
    """The least an exact forward must do, for the benchmark's floor: read each row
    once (the solver's fastest max pass, the long rows' integer-key one) and write
    its output once (zeros, and 1 at the first entry, so that the max is used)."""
    k = x.shape[1]
    zero = _like_row(out, 0.0)
    for r in range(x.shape[0]):
        top = _key_max(x, None, r, k, False)
        for j in range(k):
            out[r, j] = zero
        out[r, 0] = top == top


def _fork_unsafe() -> bool:
    """Whether a parallel launch could hang this process: a fork (a DataLoader worker, a
    multiprocessing or joblib pool) of one that may have run GNU OpenMP (see
    :mod:`sparsegen._fork`), unless the parent had started a fork-safe layer ("tbb",
    "workqueue"). Such a child runs every kernel on its own thread."""
    if not _fork.forked:
        return False
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel launch before the fork: "omp" where TBB is missing
        return True
    return layer not in ("tbb", "workqueue")


def _blocks(n_rows: int, n_elements: int, n_threads: int) -> int:
    """How many row blocks to split a call into; 1 means run on this thread.

    One block per thread: numba schedules ``prange`` statically, so more
    blocks would not balance the load, only add per-block set-up.
    """
    if n_threads <= 1 or n_elements < PARALLEL_MIN_ELEMENTS or _fork_unsafe():
        return 1
    n_threads = min(n_threads, numba.config.NUMBA_NUM_THREADS)
    # numba's thread count is per calling thread; remembered here, since asking numba
    # for it on every call is not free.
    if getattr(_numba_threads, "count", None) != n_threads:
        _set_numba_threads(n_threads)
        _numba_threads.count = n_threads
    return min(n_rows, n_threads)


def _set_numba_threads(n_threads: int) -> None:
    """``numba.set_num_threads``, keeping torch's own count: numba's "omp" layer binds to
    torch's libgomp, and starting it sets GNU OpenMP's thread count, which torch reads too
    (a user's ``torch.set_num_threads`` would be replaced by ``NUMBA_NUM_THREADS``)."""
    import torch  # (loaded already: the library's callers are torch's)

    before = torch.get_num_threads()
    numba.set_num_threads(n_threads)
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


# numba's "workqueue" threading layer, its fallback where neither TBB nor OpenMP is
# installed, aborts the process when two Python threads launch parallel kernels
# at once; "tbb" and "omp" are thread safe.
_workqueue_lock = threading.Lock()
_layer_is_thread_safe: bool | None = None  # known after the first parallel launch


def _thread_safe_layer() -> bool:
    global _layer_is_thread_safe
    if _layer_is_thread_safe is None:
        try:
            _layer_is_thread_safe = numba.threading_layer() in ("tbb", "omp")
        except ValueError:  # no parallel launch yet: numba has not chosen its layer
            return False
    return _layer_is_thread_safe


def _launch(parallel, serial, n_blocks: int, *args) -> None:
    """Run ``parallel(*args, n_blocks)``, or ``serial(*args)`` for one block or where a
    parallel launch could abort the process (another thread holds the workqueue layer)."""
    if n_blocks <= 1:
        serial(*args)
    elif _thread_safe_layer():
        parallel(*args, n_blocks)
    elif _workqueue_lock.acquire(blocking=False):
        try:
            parallel(*args, n_blocks)
        finally:
            _workqueue_lock.release()
    else:
        serial(*args)


def project_rows(
    x: np.ndarray,
    keep: np.ndarray | None,
    scale: np.ndarray,
    out: np.ndarray,
    tau: np.ndarray,
    support: np.ndarray,
    n_threads: int,
    scale_from: int = SCALE_GIVEN,
    q: np.ndarray | None = None,
) -> None:
    """Project ``scale[r] * x[r]`` onto the simplex for each row of a C-contiguous 2-D array.

    ``keep`` is None or a C-contiguous boolean array of ``x``'s shape (False:
    the entry is a score of -inf, 0 in the output, also in a NaN row).
    ``scale`` is float64 with one entry per row. Writes the output, the
    threshold and the support size per row into the arrays given.

    With ``scale_from`` ``SCALE_CONE`` or ``SCALE_HOURGLASS``, ``scale`` is written
    instead of read: each row gets ``(1 + Kq)/(Σ_j x[r, j] + Kq)`` with ``q = q[r]``
    (sparsecone's α, NaN where the denominator is ≤ 0) or ``|Σ_j x[r, j]|`` in it
    (sparsehourglass's α̂), sum and ``K`` over the kept entries, computed in the
    call (separate torch reductions would cost as much as the projection itself
    on short rows).
    """
    if q is None:
        q = scale  # never read: the scales are given
    n_blocks = _blocks(x.shape[0], x.size, n_threads)
    if x.shape[1] >= LONG_ROW:
        kernels = (_project_long_rows_parallel, _project_long_rows_serial)
    else:
        kernels = (_project_short_rows_parallel, _project_short_rows_serial)
    _launch(*kernels, n_blocks, x, keep, scale, scale_from, q, out, tau, support)


def backward_rows(
    p: np.ndarray,
    g: np.ndarray,
    scale: np.ndarray,
    support: np.ndarray,
    grad: np.ndarray,
    n_threads: int,
    moment: np.ndarray | None = None,
) -> None:
    """Write ``scale · s ⊙ (g − mean_S g)`` into ``grad``: the VJP of ``z ↦ sparsemax(scale z)``.

    With ``moment`` (one float64 per row) the scale takes a gradient too: each row's
    ``Σ_S u_j (p_j − max p)`` goes there, and a row whose scale is 0, inf or NaN gets its
    first-order limit (see :func:`_backward_moment_row`)."""
    n_blocks = _blocks(p.shape[0], p.size, n_threads)
    if p.shape[1] >= LONG_ROW:
        kernels = (_backward_long_rows_parallel, _backward_long_rows_serial)
    else:
        kernels = (_backward_short_rows_parallel, _backward_short_rows_serial)
    moment = _NO_MOMENT if moment is None else moment
    _launch(*kernels, n_blocks, p, g, scale, support, grad, moment)


_NO_MOMENT = np.empty(0)
