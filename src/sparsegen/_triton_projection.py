r"""Triton kernels for the simplex projection and its backward pass (GPU; any device
Triton runs on, its interpreter included).

The reference is :func:`sparsegen._projection.project_torch`, and these kernels
keep its contract exactly: ``sparsemax(c z)`` along the last dimension, the
special-value rules of :func:`sparsegen._projection.special_rows`, sparsecone's
and sparsehourglass's scale of :func:`sparsegen._projection.slice_scale`
computed in the same kernel, and the VJP of :func:`sparsegen._projection.vjp_torch`.

The threshold ``τ`` is found exactly, by Michelot's fixed point (Michelot 1986),
which is Newton's method on ``Σ_j [y_j − τ]_+ = 1`` and the iterative form of
the support search in Martins & Astudillo (2016), Algorithm 1: the scores are
shifted by their maximum and scaled, one gap per entry ``y = c (z − max z)``,
rounded once in the compute dtype (float32; float64 for float64 scores), so
``τ ∈ [−1, 0)``. From the lower bound ``τ = −1`` each step sums the gaps above
``τ`` and sets ``τ = (Σ_{y>τ} y − 1)/|{y > τ}|``; ``τ`` rises monotonically and
the support shrinks until its size stops changing: then ``τ`` is exact. The
loop is a data-dependent ``while`` (no fixed number of passes): at most K + 1
steps, typically 3 to 8; it stops at the first step that does not shrink the support
(rounding at a tie can grow it back), keeping the τ of the last step that shrank it; each sum is
taken in float64 and τ rounded once to the compute dtype, as the CPU kernel does: the
same support at ties (a float32 sum would leave entries tied at τ in the support, an ulp
above a τ rounded low). The same gaps feed the Newton sums, the output
``[y − τ]_+`` and its support count (the count of positive outputs after the
cast to the output dtype), so ``support == (output > 0).sum(-1)`` always.

Two paths, chosen by a plain branch on the row length ``K`` in the launcher
(shapes only: the launchers never synchronise with the device):

* short rows (``K ≤ MAX_SHORT_K``): :func:`_project_short_kernel` holds a 2-D
  block of ``BLOCK_M`` rows × ``BLOCK_K`` (the next power of two ≥ K) on chip,
  ``BLOCK_M · BLOCK_K ≈ BLOCK_ELEMENTS``; program ``i`` takes rows
  ``[i·BLOCK_M, (i+1)·BLOCK_M)``, rows past the batch end masked. The rows of a
  block take their Newton steps together until none moves.
* long rows: split into chunks of ``CHUNK`` across programs, four kernels of
  fixed grids (no host synchronisation: only shapes decide), so that a few very
  long rows still fill the device:

  A. :func:`_split_stats_kernel`, a program a ``(row, chunk)``: each chunk's partial
     statistics (maximum, NaN/+inf/-inf/kept counts, the cone's float64 sum;
     for float64 scores also their sum in units of ``SUM_UNIT``, for a row whose
     sum overflows) into per-(row, chunk) buffers.
  B. :func:`_split_candidates_kernel`, a program a ``(row, chunk)``: each program
     reduces its row's partials to the row's maximum, special flags and scale
     (chunk 0 writes them, and the cone's scale, for C and D), then appends its
     chunk's candidates, the gaps ``y > −1`` (``τ ≥ −1``: no other entry can be
     in the support), to the row's ``CAP`` slots through an atomic counter.
  C. :func:`_split_newton_kernel`, grid ``(rows,)``: Newton on the row's
     candidates, or, where they overflowed the ``CAP`` slots (e.g. all entries
     within ``1/c`` of the maximum), Newton streaming the whole row, a pass a
     step, its gaps computed again the same way, from the Newton step at τ
     estimated on ``FLAT_SAMPLE`` evenly spaced entries (3 to 7 passes on flat
     Gaussian rows, where −1 took 7 or more); writes ``τ``.
  D. :func:`_split_write_kernel`, a program a ``(row, chunk)``: the chunk's outputs,
     and its count of positive outputs added atomically to the row's support.

  Every program of B reads all its row's partials (5 a chunk, 7 for the cone), so that
  no launch is spent on a per-row reduction: ``5 · NC`` loads from L2 beside the
  chunk's ``CHUNK`` from memory, a fraction of the chunk's own loads at ``K = 2²⁰``
  (NC = 256) but a multiple of the whole row's past about ``2²²`` entries, where a kernel
  reducing each row's partials once would pay (so for the VJP's and the transform's
  write kernels).

  The gaps are computed once per entry by the same expression in B, C's
  fallback and D, so Newton, the output and the support agree. C sums in float64
  (as the CPU kernel sums a long row's candidates): the candidates' order in
  their buffer (atomic, so not fixed on a GPU) changes ``τ`` only where that sum
  rounds across a float32 boundary, by an ulp, rarely.

Every kernel reads its rows (scores, mask, gradient) through :func:`row_start`, an
``(outer, inner)`` grid of strides, so that scores along a dimension that is not the
last, strided slices and a mask broadcast over the rows (key padding against every
head's scores) are read in place rather than copied.

:func:`project_transformed_triton` runs the short-row kernel on sparsegen-exp's or -sq's
gaps, transformed in registers (the transforms of :mod:`sparsegen._triton_transform`), with
their scale computed there too: where no gradient is recorded, those mappings read their
scores once and never write the gaps.

:func:`vjp_triton` computes ``c · s ⊙ (g − mean_{j∈S} g_j)`` with ``S = {output > 0}``
counted in the kernel, short rows on chip the same way, long rows split the same way
in two kernels of a program a ``(row, chunk)`` each: :func:`_vjp_partial_kernel` (each chunk's
support size and sum of ``g`` over it) and :func:`_vjp_write_kernel` (each program
reduces its row's partials to the mean, then writes its chunk).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

import torch
import triton
import triton.language as tl

from sparsegen._projection import SUM_UNIT, TRANSFORMS, add_where_kept, moment_per_scale
from sparsegen._triton_math import (
    cone_alpha,
    cone_factor,
    cone_q_slope,
    divide,
    gap_key,
    gap_transform,
    michelot,
    michelot_step,
    newton_threshold,
    number_of_bits,
    transform_derivative,
    usable_top,
)
from sparsegen._validation import compute_dtype, moved

if TYPE_CHECKING:
    from sparsegen._projection import ConeScale

__all__ = [
    "project_transformed_triton", "project_triton", "traced_launches", "vjp_triton", "wrap_triton"
]  # fmt: skip

# Rows up to this long are held on chip (a block of rows per program); longer
# rows are split into chunks of LONG_CHUNK across programs.
MAX_SHORT_K = 16384
# Elements per program on the short path (BLOCK_M · BLOCK_K).
BLOCK_ELEMENTS = 4096
LONG_CHUNK = 4096
# Candidate slots per row on the split path (at most a quarter of the row).
MAX_CANDIDATES = 16384
# The split path's programs read their row's per-chunk partials this many at a time.
MAX_PART_BLOCK = 1024
# Entries of an overflowed (flat) row, evenly spaced, from which kernel C estimates τ.
FLAT_SAMPLE = 1024

# Infinities and NaN are written inline (float("inf"), float("nan")), never as globals:
# torch.compile copies a kernel's globals into its generated source by their repr, which
# for inf is not Python, and a NaN global fails the JIT's check that a global keeps its
# value across the kernels that read it (NaN != NaN).
# Float64 sums that overflow are summed again times this (exact: a power of two).
_UNIT_INVERSE = tl.constexpr(1.0 / SUM_UNIT)


# ----- shared pieces -------------------------------------------------------------------


@triton.jit
def row_start(ptr, rows, stride_outer, stride_inner, inner):
    """Where each row starts. The rows of a tensor the kernels read (scores, mask,
    gradient) form an ``(outer, inner)`` grid with strides ``(stride_outer,
    stride_inner)`` (:func:`rows_arg`): scores along a dimension that is not the last
    (``(B, C, H, W)`` along ``C``: outer stride ``CHW``, inner 1) and a mask broadcast
    over rows (key padding ``(B, 1, K)`` against ``(B, H, K)`` scores: outer stride
    ``K``, inner 0) are read in place, never copied."""
    rows = rows.to(tl.int64)
    return ptr + (rows // inner) * stride_outer + (rows % inner) * stride_inner


@triton.jit
def _wide(raw, F64: tl.constexpr):
    """Scores in float64 for the cone's sum: float64 scores as they are, the others by way
    of float32 (exact)."""
    if F64:
        return raw.to(tl.float64)
    return raw.to(tl.float32).to(tl.float64)


@triton.jit
def _special_rows(has_nan, n_pos, n_neg, top, c, K):
    """Which rows :func:`sparsegen._projection.special_rows` answers (``bad``: a NaN, no
    finite maximum, or a NaN scale) and which of them are NaN (a NaN score, or no +inf
    score in a row not all -inf), from each row's counts of NaN, +inf and -inf."""
    bad = has_nan | ((top == -float("inf")) | (top == float("inf")) | (top != top)) | (c != c)
    nan_row = has_nan | ((n_pos == 0) & (n_neg < K))
    return bad, nan_row


@triton.jit
def _gap(x, in_row, bad, top, c):
    """``c (x − top)``, the one rounding of each entry that the Newton sums, the output
    and the support share; -inf scores stay -inf (also under a zero scale). A bad
    row's entries are 0 (it is replaced by the special-value rules), so that its
    Newton loop ends at once; padding (``in_row`` False) stays -inf."""
    x = tl.where(bad & in_row, 0.0, x)
    return tl.where(x == -float("inf"), -float("inf"), (x - top) * c)


@triton.jit
def _finish(x, keep, y, tau, bad, nan_row, share, HAS_MASK: tl.constexpr):
    """The output entries: ``[y − τ]_+``, or a special row's (NaN, or ``share`` at the
    +inf scores, else 0); masked entries 0 even in a NaN row."""
    d = y - tau
    out = tl.where(d > 0, d, 0.0)
    special = tl.where(nan_row, float("nan"), tl.where(x == float("inf"), share, 0.0))
    out = tl.where(bad, special, out)
    if HAS_MASK:
        out = tl.where(keep, out, 0.0)
    return out


@triton.jit
def _row_scale(
    given,
    q,
    total,
    unit,
    kept,
    SCALE_MAX: tl.constexpr,
    CT: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    CONE: tl.constexpr,
    MIRROR: tl.constexpr,
    LIN: tl.constexpr,
):
    """``(c, alpha)``: each row's scale in the compute dtype, capped at that dtype's largest
    value (the limit: the maxima share the mass), and uncapped, for the caller to write as
    the computed scale: the cone's of q, the ``given`` one (with ``LIN``, sparsegen-lin's
    ``1/(1 − λ)`` of the ``given`` λ, NaN where λ is not < 1, as
    :func:`sparsegen.functional.sparsegen_lin` makes it), or 1. The caller loads
    ``given`` and ``q``: a helper passed a pointer would make torch.compile's analysis of a
    kernel take the pointer's tensor as written wherever the helper's result addresses a
    store (the split path's candidate slots)."""
    if CONE:
        alpha = cone_alpha(total, unit, kept, q.to(tl.float64), MIRROR).to(CT)
    elif HAS_SCALE:
        alpha = given.to(CT)
        if LIN:  # (rounded to nearest, as torch.reciprocal: `/` compiles to an approximation)
            alpha = tl.where(alpha < 1.0, divide(1.0, 1.0 - alpha), float("nan"))
    else:
        alpha = tl.zeros_like(total).to(CT) + 1.0
    return tl.where(alpha > SCALE_MAX, SCALE_MAX, alpha), alpha  # NaN stays NaN


@triton.jit
def _checked_q(q):
    """A tensor q (float64) as :func:`sparsegen._validation.check_q` makes it on a device: NaN
    where it is not finite and ``≥ 0`` (its rows then NaN), checked here, not by torch ops."""
    return tl.where((q >= 0) & (q < float("inf")), q, float("nan"))


@triton.jit
def _gap_scale(log_c, top, TRANSFORM: tl.constexpr, SCALE_MAX: tl.constexpr):
    """The scale of sparsegen-exp's (``TRANSFORM=1``) or -sq's (2) gaps below ``top``:
    ``e^top/(1 − λ)`` or ``top²/(1 − λ)`` from ``log_c = −log(1 − λ)``, capped, as
    :func:`sparsegen.functional.sparsegen_exp` and ``sparsegen_sq`` scale them."""
    if TRANSFORM == 1:
        log_scale = top + log_c
    else:
        log_scale = 2.0 * tl.log(top) + log_c
    c = tl.exp(log_scale)
    return tl.where(c > SCALE_MAX, SCALE_MAX, c)


@triton.jit
def _kept_entries(keep_ptr, rows, cols, stride_mo, stride_mi, mask_inner, stride_mk, ok,
                  HAS_MASK: tl.constexpr):  # fmt: skip
    """The entries of a block of rows (``ok``: inside the tensor) that the mask keeps."""
    if not HAS_MASK:
        return ok
    starts = row_start(keep_ptr, rows, stride_mo, stride_mi, mask_inner)
    flags = tl.load(starts[:, None] + cols[None, :] * stride_mk, mask=ok, other=0)
    return (flags != 0) & ok


@triton.jit
def _usable(c):
    """Whether a scale enters the VJP's formulas: finite and not 0 (else its row takes the
    first-order limit, :func:`_scaled_vjp`, and its moment is 0)."""
    return (tl.abs(c) < float("inf")) & (c != 0)


@triton.jit
def _scaled_vjp(u, c):
    """``c·u`` for a usable scale (finite, not 0); for another, the first-order limit
    ``u·c`` with ``0 · inf`` and ``0 · NaN`` taken as 0 (``u · 0`` first keeps a non-finite
    ``u`` NaN, as ``c·u`` with ``c = 0`` would). ``c`` one value a row, broadcast."""
    usable = _usable(c)
    limit = u * tl.where(usable, 0.0, c)
    return u * tl.where(usable, c, 0.0) + tl.where(limit == limit, limit, 0.0)


# ----- forward: short rows, a block of rows per program --------------------------------


# (q_arg, scale_arg: a pointer, or a float's bits, any integer: never specialised to a constant)
@triton.jit(do_not_specialize=["q_arg", "scale_arg"])
def _project_short_kernel(
    z_ptr,
    stride_zo,
    stride_zi,
    z_inner,
    stride_zk,
    keep_ptr,
    stride_mo,
    stride_mi,
    mask_inner,
    stride_mk,
    scale_arg,
    stride_s,
    q_arg,
    stride_q,
    out_ptr,
    stride_oo,
    stride_oi,
    out_inner,
    stride_ok,
    tau_ptr,
    support_ptr,
    alpha_ptr,
    factor_ptr,
    slope_ptr,
    R,
    K,
    SCALE_MAX: tl.constexpr,
    CT: tl.constexpr,
    F64: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    CONE: tl.constexpr,
    MIRROR: tl.constexpr,
    LIN: tl.constexpr,
    Q_BITS: tl.constexpr,
    FACTOR: tl.constexpr,
    Q_SLOPE: tl.constexpr,
    SCALE_BITS: tl.constexpr,
    TRANSFORM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``BLOCK_M`` rows of ``K ≤ BLOCK_K`` entries, held on chip; reference:
    :func:`sparsegen._projection.project_torch`. ``TRANSFORM`` 1 or 2 projects
    sparsegen-exp's or -sq's gaps of the scores instead (``TRANSFORMS[TRANSFORM - 1]``),
    the scale holding ``−log(1 − λ)``: :func:`project_transformed_triton`."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K).to(tl.int64)  # (K · stride may pass 2³¹: a strided dim)
    row_ok = rows < R
    col_ok = cols < K
    ok = row_ok[:, None] & col_ok[None, :]
    z_rows = row_start(z_ptr, rows, stride_zo, stride_zi, z_inner)
    raw = tl.load(z_rows[:, None] + cols[None, :] * stride_zk, mask=ok, other=0.0)
    keep = _kept_entries(keep_ptr, rows, cols, stride_mo, stride_mi, mask_inner, stride_mk, ok,
                         HAS_MASK)  # fmt: skip
    x = tl.where(keep, raw.to(CT), -float("inf"))
    if TRANSFORM != 0:  # the gaps below the row's top, as sparsegen._triton_transform's
        top_raw = tl.max(gap_key(raw, keep, CT, TRANSFORM == 2), axis=1)
        top_raw = usable_top(top_raw, TRANSFORM == 2)
        x = tl.where(
            keep, gap_transform(raw, keep, top_raw[:, None], CT, TRANSFORM - 1), -float("inf")
        )

    # The cone's sum over the kept entries, in float64 (in units of SUM_UNIT where a
    # float64 sum overflows, as kept_sum does).
    total = tl.zeros([BLOCK_M], tl.float64)
    unit = tl.zeros([BLOCK_M], tl.float64) + 1.0
    kept = tl.sum(keep.to(tl.int32), axis=1)
    if CONE:
        wide = tl.where(keep, _wide(raw, F64), 0.0)
        total = tl.sum(wide, axis=1)
        if F64:  # (an infinite score stays one in any unit, and decides the sum)
            rescale = ~(tl.abs(total) < float("inf"))
            unit = tl.where(rescale, 1.0 / _UNIT_INVERSE, 1.0)
            total = tl.where(rescale, tl.sum(wide * _UNIT_INVERSE, axis=1), total)
    if Q_BITS:  # a float q, passed as its bits
        q = number_of_bits(q_arg, total)
    else:
        q = tl.load(q_arg + rows * stride_q, mask=row_ok & CONE, other=1.0)
        if CONE:
            q = _checked_q(q.to(tl.float64))
    if SCALE_BITS:  # (a float scale, or log c, passed as its bits)
        given = number_of_bits(scale_arg, total)
    else:
        given = tl.load(scale_arg + rows * stride_s, mask=row_ok & HAS_SCALE, other=1.0)
    c, alpha = _row_scale(
        given, q, total, unit, kept, SCALE_MAX, CT, HAS_SCALE, CONE, MIRROR, LIN
    )  # fmt: skip
    if CONE or LIN:
        tl.store(alpha_ptr + rows, alpha, mask=row_ok)
    if FACTOR and CONE:  # what the backward needs of the scores besides the output
        factor = cone_factor(total, kept, q.to(tl.float64), MIRROR)
        tl.store(factor_ptr + rows, factor.to(factor_ptr.dtype.element_ty), mask=row_ok)
    if Q_SLOPE and CONE:  # a learnt q's: its gradient is the backward's moment times this
        slope = cone_q_slope(total, unit, kept, q.to(tl.float64), MIRROR)
        tl.store(slope_ptr + rows, slope.to(slope_ptr.dtype.element_ty), mask=row_ok)
    if TRANSFORM != 0:
        c = _gap_scale(c, top_raw, TRANSFORM, SCALE_MAX)
        if FACTOR:  # the transform's: its scale, and the top its derivative takes
            tl.store(alpha_ptr + rows, c, mask=row_ok)
            tl.store(factor_ptr + rows, top_raw.to(factor_ptr.dtype.element_ty), mask=row_ok)

    # Special rows (special_rows): a NaN, no finite maximum, or a NaN scale.
    has_nan = tl.sum((x != x).to(tl.int32), axis=1) > 0
    n_pos = tl.sum((x == float("inf")).to(tl.int32), axis=1)
    n_neg = tl.sum(((x == -float("inf")) & col_ok[None, :]).to(tl.int32), axis=1)
    top = tl.max(x, axis=1)
    bad, nan_row = _special_rows(has_nan, n_pos, n_neg, top, c, K)
    share = divide(1.0, tl.maximum(n_pos, 1).to(CT))
    special_tau = tl.where(nan_row, float("nan"), tl.where(n_pos > 0, float("inf"), -float("inf")))
    top = tl.where(bad, 0.0, top)
    c = tl.where(bad, 1.0, c)

    y = _gap(x, col_ok[None, :], bad[:, None], top[:, None], c[:, None])

    # Newton from τ = −1 until no row's support shrinks, the gaps summed in float64 and τ
    # rounded once, as the CPU kernel does: a float32 sum's rounding puts τ an ulp below
    # entries tied at it, which then stay in the support (thousands of tied gaps would
    # keep extra entries and an output summing past 1)
    tau, _count = michelot(y, tl.zeros([BLOCK_M], CT) - 1.0, row_ok, CT)

    out = _finish(
        x, keep, y, tau[:, None], bad[:, None], nan_row[:, None], share[:, None], HAS_MASK
    ).to(out_ptr.dtype.element_ty)
    out_rows = row_start(out_ptr, rows, stride_oo, stride_oi, out_inner)
    tl.store(out_rows[:, None] + cols[None, :] * stride_ok, out, mask=ok)
    support = tl.sum(((out > 0) & ok).to(tl.int64), axis=1)
    tl.store(support_ptr + rows, support, mask=row_ok)
    tau_out = tl.where(bad, special_tau, tau + top * c)
    tl.store(tau_ptr + rows, tau_out.to(tau_ptr.dtype.element_ty), mask=row_ok)


# ----- forward: long rows, split into chunks across programs ---------------------------


@triton.jit
def split_program(K, CHUNK: tl.constexpr):
    """The ``(row, chunk)`` of a split path's program, on a grid of one axis: CUDA caps the
    second at 65,535 (rows of 2²⁸ entries in chunks of 4,096)."""
    pid = tl.program_id(0)  # < 2³¹, as the chunks a row: one 32-bit division
    chunks = (K + CHUNK - 1) // CHUNK
    return (pid // chunks).to(tl.int64), pid % chunks


@triton.jit
def _load_chunk(
    z_ptr, stride_zo, stride_zi, z_inner, stride_zk,
    keep_ptr, stride_mo, stride_mi, mask_inner, stride_mk,
    row, cols, K, CT: tl.constexpr, HAS_MASK: tl.constexpr,
):  # fmt: skip
    """Columns ``cols`` of row ``row`` (the kernels' scores and mask arguments as they
    come): its raw scores, which are kept (in the row), and the scores in the compute
    dtype with -inf at the masked entries and the padding."""
    ok = cols < K
    z_row = row_start(z_ptr, row, stride_zo, stride_zi, z_inner)
    raw = tl.load(z_row + cols * stride_zk, mask=ok, other=0.0)
    if HAS_MASK:
        keep_row = row_start(keep_ptr, row, stride_mo, stride_mi, mask_inner)
        keep = (tl.load(keep_row + cols * stride_mk, mask=ok, other=0) != 0) & ok
    else:
        keep = ok
    return raw, keep, tl.where(keep, raw.to(CT), -float("inf"))


@triton.jit
def _split_stats_kernel(
    z_ptr,
    stride_zo,
    stride_zi,
    z_inner,
    stride_zk,
    keep_ptr,
    stride_mo,
    stride_mi,
    mask_inner,
    stride_mk,
    part_max_ptr,
    part_count_ptr,
    part_sum_ptr,
    counter_ptr,
    support_ptr,
    K,
    NC,
    CT: tl.constexpr,
    F64: tl.constexpr,
    HAS_MASK: tl.constexpr,
    CONE: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """Kernel A, program ``(row, chunk)``: the chunk's partial statistics. ``part_max``
    ``[row, chunk]``: the largest non-NaN score (-inf for none); ``part_count[row, :,
    chunk]``: its NaN, +inf, -inf (masked included) and kept counts; with ``CONE``,
    ``part_sum[row, :, chunk]``: the float64 sum of the kept scores and, for float64
    scores, their sum in units of ``SUM_UNIT``. Chunk 0 zeroes its row's candidate counter
    and support count, which kernels B and D add to (a fill of each is a launch more)."""
    row, chunk = split_program(K, CHUNK)
    first = chunk == 0
    tl.store(counter_ptr + row, tl.zeros([], tl.int32), mask=first)
    tl.store(support_ptr + row, tl.zeros([], tl.int64), mask=first)
    cols = chunk.to(tl.int64) * CHUNK + tl.arange(0, CHUNK)
    raw, keep, x = _load_chunk(
        z_ptr, stride_zo, stride_zi, z_inner, stride_zk,
        keep_ptr, stride_mo, stride_mi, mask_inner, stride_mk,
        row, cols, K, CT, HAS_MASK,
    )  # fmt: skip
    tl.store(part_max_ptr + row * NC + chunk, tl.max(tl.where(x == x, x, -float("inf")), axis=0))
    counts = part_count_ptr + row * 4 * NC + chunk
    tl.store(counts, tl.sum((x != x).to(tl.int32), axis=0))
    tl.store(counts + NC, tl.sum((x == float("inf")).to(tl.int32), axis=0))
    tl.store(counts + 2 * NC, tl.sum(((x == -float("inf")) & (cols < K)).to(tl.int32), axis=0))
    tl.store(counts + 3 * NC, tl.sum(keep.to(tl.int32), axis=0))
    if CONE:
        wide = tl.where(keep, _wide(raw, F64), 0.0)
        sums = part_sum_ptr + row * 2 * NC + chunk
        tl.store(sums, tl.sum(wide, axis=0))
        if F64:
            tl.store(sums + NC, tl.sum(wide * _UNIT_INVERSE, axis=0))


# (q_arg, scale_arg: a pointer, or a float's bits, any integer: never specialised to a constant)
@triton.jit(do_not_specialize=["q_arg", "scale_arg"])
def _split_candidates_kernel(
    z_ptr,
    stride_zo,
    stride_zi,
    z_inner,
    stride_zk,
    keep_ptr,
    stride_mo,
    stride_mi,
    mask_inner,
    stride_mk,
    scale_arg,
    stride_s,
    q_arg,
    stride_q,
    part_max_ptr,
    part_count_ptr,
    part_sum_ptr,
    row_value_ptr,
    row_flag_ptr,
    alpha_ptr,
    factor_ptr,
    slope_ptr,
    cand_ptr,
    counter_ptr,
    R,
    K,
    NC,
    CAP,
    SCALE_MAX: tl.constexpr,
    CT: tl.constexpr,
    F64: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    CONE: tl.constexpr,
    MIRROR: tl.constexpr,
    LIN: tl.constexpr,
    Q_BITS: tl.constexpr,
    FACTOR: tl.constexpr,
    Q_SLOPE: tl.constexpr,
    SCALE_BITS: tl.constexpr,
    CHUNK: tl.constexpr,
    PART_BLOCK: tl.constexpr,
):
    """Kernel B, program ``(row, chunk)``: the row's maximum, special flags and scale from
    its chunks' partials (every program of the row computes them; chunk 0 writes them,
    and the cone's scale), then the chunk's candidates, its gaps ``y > −1`` (``τ ≥ −1``:
    no other entry can be in the support), appended to the row's ``CAP`` slots of
    ``cand`` at a position taken from the row's counter by an atomic add (the counter
    still counts the candidates that no longer fit)."""
    row, chunk = split_program(K, CHUNK)
    rows = row + tl.arange(0, 1)  # as a block of one, for the shared per-row helpers
    row_ok = rows < R
    parts = tl.arange(0, PART_BLOCK)
    acc_max = tl.full([PART_BLOCK], -float("inf"), CT)
    acc_nan = tl.zeros([PART_BLOCK], tl.int32)
    acc_pos = tl.zeros([PART_BLOCK], tl.int32)
    acc_neg = tl.zeros([PART_BLOCK], tl.int32)
    acc_kept = tl.zeros([PART_BLOCK], tl.int32)
    acc_sum = tl.zeros([PART_BLOCK], tl.float64)
    acc_units = tl.zeros([PART_BLOCK], tl.float64)
    for start in range(0, NC, PART_BLOCK):
        idx = start + parts
        ok = idx < NC
        acc_max = tl.maximum(
            acc_max, tl.load(part_max_ptr + row * NC + idx, mask=ok, other=-float("inf"))
        )
        counts = part_count_ptr + row * 4 * NC + idx
        acc_nan += tl.load(counts, mask=ok, other=0)
        acc_pos += tl.load(counts + NC, mask=ok, other=0)
        acc_neg += tl.load(counts + 2 * NC, mask=ok, other=0)
        acc_kept += tl.load(counts + 3 * NC, mask=ok, other=0)
        if CONE:
            sums = part_sum_ptr + row * 2 * NC + idx
            acc_sum += tl.load(sums, mask=ok, other=0.0)
            if F64:
                acc_units += tl.load(sums + NC, mask=ok, other=0.0)
    kept = tl.sum(acc_kept[None, :], axis=1)
    total = tl.sum(acc_sum[None, :], axis=1)
    unit = tl.zeros([1], tl.float64) + 1.0
    if CONE:
        if F64:  # float64 scores whose sum overflows: in units of SUM_UNIT
            rescale = ~(tl.abs(total) < float("inf"))
            unit = tl.where(rescale, 1.0 / _UNIT_INVERSE, 1.0)
            total = tl.where(rescale, tl.sum(acc_units[None, :], axis=1), total)
    if Q_BITS:  # a float q, passed as its bits
        q = number_of_bits(q_arg, total)
    else:
        q = tl.load(q_arg + rows * stride_q, mask=row_ok & CONE, other=1.0)
        if CONE:
            q = _checked_q(q.to(tl.float64))
    if SCALE_BITS:  # (a float scale, passed as its bits)
        given = number_of_bits(scale_arg, total)
    else:
        given = tl.load(scale_arg + rows * stride_s, mask=row_ok & HAS_SCALE, other=1.0)
    c, alpha = _row_scale(
        given, q, total, unit, kept, SCALE_MAX, CT, HAS_SCALE, CONE, MIRROR, LIN
    )  # fmt: skip
    has_nan = tl.sum(acc_nan[None, :], axis=1) > 0
    n_pos = tl.sum(acc_pos[None, :], axis=1)
    n_neg = tl.sum(acc_neg[None, :], axis=1)
    top = tl.max(acc_max[None, :], axis=1)
    bad, nan_row = _special_rows(has_nan, n_pos, n_neg, top, c, K)
    top = tl.where(bad, 0.0, top)
    c = tl.where(bad, 1.0, c)
    first = row_ok & (chunk == 0)
    if CONE or LIN:
        tl.store(alpha_ptr + rows, alpha, mask=first)
    if FACTOR:
        factor = cone_factor(total, kept, q.to(tl.float64), MIRROR)
        tl.store(factor_ptr + rows, factor.to(factor_ptr.dtype.element_ty), mask=first)
    if Q_SLOPE and CONE:
        slope = cone_q_slope(total, unit, kept, q.to(tl.float64), MIRROR)
        tl.store(slope_ptr + rows, slope.to(slope_ptr.dtype.element_ty), mask=first)
    tl.store(row_value_ptr + rows * 3, top, mask=first)
    tl.store(row_value_ptr + rows * 3 + 1, c, mask=first)
    tl.store(row_flag_ptr + rows * 3, bad.to(tl.int32), mask=first)
    tl.store(row_flag_ptr + rows * 3 + 1, nan_row.to(tl.int32), mask=first)
    tl.store(row_flag_ptr + rows * 3 + 2, n_pos, mask=first)

    # The chunk loaded here, not by _load_chunk, for torch.compile's analysis (see
    # _row_scale): the slots below are addressed by the scores' gaps.
    cols = chunk.to(tl.int64) * CHUNK + tl.arange(0, CHUNK)
    ok = cols < K
    z_row = row_start(z_ptr, row, stride_zo, stride_zi, z_inner)
    x = tl.load(z_row + cols * stride_zk, mask=ok, other=0.0).to(CT)
    if HAS_MASK:
        keep_row = row_start(keep_ptr, row, stride_mo, stride_mi, mask_inner)
        ok &= tl.load(keep_row + cols * stride_mk, mask=ok, other=0) != 0
    x = tl.where(ok, x, -float("inf"))
    y = _gap(x[None, :], (cols < K)[None, :], bad[:, None], top[:, None], c[:, None])
    is_candidate = ((y > -1.0) & ~bad[:, None]).to(tl.int32)  # a bad row has none
    found = tl.sum(is_candidate, axis=1)
    base = tl.atomic_add(counter_ptr + rows, found, mask=row_ok & (found > 0))
    slot = base[:, None] + tl.cumsum(is_candidate, axis=1) - 1
    tl.store(
        cand_ptr + rows[:, None] * CAP + slot,
        y,
        mask=(is_candidate != 0) & (slot < CAP) & row_ok[:, None],
    )


@triton.jit
def _streamed_sums(
    z_ptr, stride_zo, stride_zi, z_inner, stride_zk,
    keep_ptr, stride_mo, stride_mi, mask_inner, stride_mk,
    row, K, bad, top, c, tau, CT: tl.constexpr, HAS_MASK: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """The float64 sum and the count of row ``row``'s gaps above ``tau``, in one pass over
    the whole row, each gap computed as kernel D writes it."""
    offs = tl.arange(0, CHUNK)
    acc_count = tl.zeros([CHUNK], tl.int32)
    acc_total = tl.zeros([CHUNK], tl.float64)
    for start in range(0, K, CHUNK):
        cols = start + offs.to(tl.int64)  # K · stride may pass 2³¹
        _raw, _keep, x = _load_chunk(
            z_ptr, stride_zo, stride_zi, z_inner, stride_zk,
            keep_ptr, stride_mo, stride_mi, mask_inner, stride_mk,
            row, cols, K, CT, HAS_MASK,
        )  # fmt: skip
        y = _gap(x, cols < K, bad, top, c)
        above = y > tau
        acc_count += above.to(tl.int32)
        acc_total += tl.where(above, y.to(tl.float64), 0.0)
    return tl.sum(acc_total, axis=0), tl.sum(acc_count, axis=0)


@triton.jit
def _sampled_start(
    z_ptr, stride_zo, stride_zi, z_inner, stride_zk,
    keep_ptr, stride_mo, stride_mi, mask_inner, stride_mk,
    row, K, bad, top, c, CT: tl.constexpr, HAS_MASK: tl.constexpr, CHUNK: tl.constexpr,
    SAMPLE: tl.constexpr,
):  # fmt: skip
    """A lower bound on a flat row's τ, close to it, as the CPU kernel's
    ``_project_row_in_place`` starts: τ estimated from ``m ≤ SAMPLE`` evenly spaced
    entries, each standing for ``K/m`` (the root of ``Σ_sample [y − τ]_+ = m/K``, by
    :func:`michelot` on the gaps times ``K/m``), then the Newton step from that
    estimate over the whole row, which is below τ from either side (``Σ [y − τ]_+ − 1``
    is convex), or −1."""
    i = tl.arange(0, SAMPLE).to(tl.int64)
    m = tl.minimum(K, SAMPLE).to(tl.int64)
    # i·K/m in float64, floored: the integer quotient (exact below 2⁵³, and a fraction
    # (m − 1)/m is far from rounding up), without a 64-bit integer division
    spaced = (i.to(tl.float64) * K / m.to(tl.float64)).to(tl.int64)
    cols = tl.where(i < m, spaced, K)  # (past the sample: padding)
    _raw, _keep, x = _load_chunk(
        z_ptr, stride_zo, stride_zi, z_inner, stride_zk,
        keep_ptr, stride_mo, stride_mi, mask_inner, stride_mk,
        row, cols, K, CT, HAS_MASK,
    )  # fmt: skip
    # solved as a block of one row by Michelot on the gaps times K/m, from −K/m (−1 in
    # the gaps' unit), and scaled back
    stands_for = K / m.to(tl.float64)
    y = _gap(x, cols < K, bad, top, c).to(tl.float64) * stands_for
    start = tl.zeros([1], tl.float64) - stands_for
    estimate, _count = michelot(y[None, :], start, start == start, tl.float64)
    guess = tl.sum(estimate, axis=0) / stands_for
    total, n = _streamed_sums(
        z_ptr, stride_zo, stride_zi, z_inner, stride_zk,
        keep_ptr, stride_mo, stride_mi, mask_inner, stride_mk,
        row, K, bad, top, c, guess.to(CT), CT, HAS_MASK, CHUNK,
    )  # fmt: skip
    start = tl.where(n > 0, newton_threshold(total, tl.maximum(n, 1), CT), -1.0)
    return tl.maximum(start.to(CT), -1.0)


@triton.jit
def _split_newton_kernel(
    z_ptr,
    stride_zo,
    stride_zi,
    z_inner,
    stride_zk,
    keep_ptr,
    stride_mo,
    stride_mi,
    mask_inner,
    stride_mk,
    row_value_ptr,
    row_flag_ptr,
    cand_ptr,
    counter_ptr,
    tau_ptr,
    K,
    CAP,
    CT: tl.constexpr,
    HAS_MASK: tl.constexpr,
    CHUNK: tl.constexpr,
    SAMPLE: tl.constexpr,
):
    """Kernel C, program ``row``: Newton until the support stops shrinking, each step a
    loop over the row's candidates from ``τ = −1`` when they all fit in its ``CAP``
    slots, else (overflow: a flat row) a pass over the whole row, its gaps computed
    again the same way, from :func:`_sampled_start`; writes ``τ`` in the compute dtype
    (for kernel D) and as reported."""
    row = tl.program_id(0).to(tl.int64)
    top = tl.load(row_value_ptr + row * 3)
    c = tl.load(row_value_ptr + row * 3 + 1)
    bad = tl.load(row_flag_ptr + row * 3) != 0
    nan_row = tl.load(row_flag_ptr + row * 3 + 1) != 0
    n_pos = tl.load(row_flag_ptr + row * 3 + 2)
    found = tl.load(counter_ptr + row)
    fits = found <= CAP
    cand_row = cand_ptr + row * CAP
    offs = tl.arange(0, CHUNK)

    tau = top * 0.0 - 1.0  # top is finite (0 in a bad row)
    if found > CAP:
        tau = _sampled_start(
            z_ptr, stride_zo, stride_zi, z_inner, stride_zk,
            keep_ptr, stride_mo, stride_mi, mask_inner, stride_mk,
            row, K, bad, top, c, CT, HAS_MASK, CHUNK, SAMPLE,
        )  # fmt: skip
    count = found * 0 + (K + 1)  # tensors (K may be specialised to a constant)
    moving = ~bad  # a bad row's τ is the special one
    while moving:
        # summed in float64, as the CPU kernel sums a long row's candidates: the slots'
        # order (atomic) then moves τ only where that sum rounds across a float32 boundary
        if fits:
            acc_count = tl.zeros([CHUNK], tl.int32)
            acc_total = tl.zeros([CHUNK], tl.float64)
            for start in range(0, found, CHUNK):
                idx = start + offs
                y = tl.load(cand_row + idx, mask=idx < found, other=-float("inf"))
                above = y > tau
                acc_count += above.to(tl.int32)
                acc_total += tl.where(above, y.to(tl.float64), 0.0)
            total, n = tl.sum(acc_total, axis=0), tl.sum(acc_count, axis=0)
        else:
            total, n = _streamed_sums(
                z_ptr, stride_zo, stride_zi, z_inner, stride_zk,
                keep_ptr, stride_mo, stride_mi, mask_inner, stride_mk,
                row, K, bad, top, c, tau, CT, HAS_MASK, CHUNK,
            )  # fmt: skip
        tau, count, moving = michelot_step(tau, count, total, n, ~bad, CT)

    tl.store(row_value_ptr + row * 3 + 2, tau)
    special_tau = tl.where(nan_row, float("nan"), tl.where(n_pos > 0, float("inf"), -float("inf")))
    tau_out = tl.where(bad, special_tau, tau + top * c)
    tl.store(tau_ptr + row, tau_out.to(tau_ptr.dtype.element_ty))


@triton.jit
def _split_write_kernel(
    z_ptr,
    stride_zo,
    stride_zi,
    z_inner,
    stride_zk,
    keep_ptr,
    stride_mo,
    stride_mi,
    mask_inner,
    stride_mk,
    row_value_ptr,
    row_flag_ptr,
    out_ptr,
    stride_oo,
    stride_oi,
    out_inner,
    stride_ok,
    support_ptr,
    K,
    CT: tl.constexpr,
    HAS_MASK: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """Kernel D, program ``(row, chunk)``: the chunk's output ``[y − τ]_+`` (a special
    row's values where the row is one), and its count of positive outputs added to
    the row's (zeroed) support count."""
    row, chunk = split_program(K, CHUNK)
    top = tl.load(row_value_ptr + row * 3)
    c = tl.load(row_value_ptr + row * 3 + 1)
    tau = tl.load(row_value_ptr + row * 3 + 2)
    bad = tl.load(row_flag_ptr + row * 3) != 0
    nan_row = tl.load(row_flag_ptr + row * 3 + 1) != 0
    share = divide(1.0, tl.maximum(tl.load(row_flag_ptr + row * 3 + 2), 1).to(CT))
    cols = chunk.to(tl.int64) * CHUNK + tl.arange(0, CHUNK)
    ok = cols < K
    _raw, keep, x = _load_chunk(
        z_ptr, stride_zo, stride_zi, z_inner, stride_zk,
        keep_ptr, stride_mo, stride_mi, mask_inner, stride_mk,
        row, cols, K, CT, HAS_MASK,
    )  # fmt: skip
    y = _gap(x, ok, bad, top, c)
    out = _finish(x, keep, y, tau, bad, nan_row, share, HAS_MASK).to(out_ptr.dtype.element_ty)
    out_row = row_start(out_ptr, row, stride_oo, stride_oi, out_inner)
    tl.store(out_row + cols * stride_ok, out, mask=ok)
    positive = tl.sum(((out > 0) & ok).to(tl.int64), axis=0)
    tl.atomic_add(support_ptr + row, positive, mask=positive > 0)


# ----- backward --------------------------------------------------------------------------


# (scale_arg: a pointer, or a float's bits, any integer: never specialised to a constant)
@triton.jit(do_not_specialize=["scale_arg"])
def _vjp_short_kernel(
    p_ptr,
    stride_po,
    stride_pi,
    p_inner,
    stride_pk,
    g_ptr,
    stride_go,
    stride_gi,
    g_inner,
    stride_gk,
    scale_arg,
    stride_s,
    moment_ptr,
    factor_ptr,
    slope_ptr,
    keep_ptr,
    stride_mo,
    stride_mi,
    mask_inner,
    stride_mk,
    z_ptr,
    stride_zo,
    stride_zi,
    z_inner,
    stride_zk,
    top_ptr,
    res_ptr,
    stride_ro,
    stride_ri,
    res_inner,
    stride_rk,
    R,
    K,
    CT: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    SCALE_BITS: tl.constexpr,
    MOMENT: tl.constexpr,
    SCORES_MOMENT: tl.constexpr,
    PER_SCALE: tl.constexpr,
    LIN: tl.constexpr,
    CONE_TERM: tl.constexpr,
    Q_SLOPE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    TRANSFORM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``c · s ⊙ (g − mean_S g)`` for ``BLOCK_M`` rows held on chip; reference:
    :func:`sparsegen._projection.vjp_torch`. With ``MOMENT`` (a scale that takes a
    gradient), each row's ``Σ_S u_j (p_j − max p)`` into ``moment`` (0 where the scale is
    not usable or the support empty; with ``PER_SCALE`` divided by ``c``: the scale's
    gradient; with ``LIN`` too, times ``c``: the gradient of λ, for ``c = 1/(1 − λ)``;
    with ``SCORES_MOMENT``, ``c Σ_S u_j z_j`` over the finite scores ``z`` instead, for
    half outputs, whose few digits the moment would lose), and such a scale's limit
    (:func:`_scaled_vjp`); reference:
    :func:`sparsegen._projection.scaled_vjp_compiled`. With ``CONE_TERM`` (and ``MOMENT``),
    the whole gradient of a cone's scale computed from the scores: a scale that is not
    finite counts as 0, and ``factor · c · moment`` is added at each kept entry
    (``keep``); reference: the unfused composition in
    :func:`sparsegen._ops._project_backward`; with ``Q_SLOPE`` too, the moment written is
    times each row's ``slope``, ``∂ log α/∂q``: a learnt q's gradient. With ``TRANSFORM``
    1 or 2, what was projected was sparsegen-exp's or -sq's gaps of the scores ``z`` below
    each row's ``top`` (:func:`project_transformed_triton`): the result is carried through
    the transform's derivative (:func:`~sparsegen._triton_math.transform_derivative`)."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K).to(tl.int64)  # (K · stride may pass 2³¹: a strided dim)
    row_ok = rows < R
    ok = row_ok[:, None] & (cols < K)[None, :]
    p_rows = row_start(p_ptr, rows, stride_po, stride_pi, p_inner)
    p = tl.load(p_rows[:, None] + cols[None, :] * stride_pk, mask=ok, other=0.0)
    g_rows = row_start(g_ptr, rows, stride_go, stride_gi, g_inner)
    g = tl.load(g_rows[:, None] + cols[None, :] * stride_gk, mask=ok, other=0.0)
    g = g.to(CT)
    inside = (p > 0) & ok
    n = tl.sum(inside.to(tl.int32), axis=1)
    mean = divide(tl.sum(tl.where(inside, g, 0.0), axis=1), tl.maximum(n, 1).to(CT))
    result = tl.where(inside, g - mean[:, None], 0.0)
    if HAS_SCALE:
        if SCALE_BITS:  # (a float scale, passed as its bits)
            c = number_of_bits(scale_arg, rows).to(CT)
        else:
            c = tl.load(scale_arg + rows * stride_s, mask=row_ok, other=1.0).to(CT)
        if CONE_TERM:  # (an overflowed α's slice is the limit: locally constant)
            c = tl.where(tl.abs(c) < float("inf"), c, 0.0)
        if MOMENT:
            if SCORES_MOMENT:
                raw = tl.load(
                    row_start(z_ptr, rows, stride_zo, stride_zi, z_inner)[:, None]
                    + cols[None, :] * stride_zk, mask=ok, other=0.0,
                ).to(CT)  # fmt: skip
                finite = inside & (tl.abs(raw) < float("inf"))
                moment = c * tl.sum(tl.where(finite, result * raw, 0.0), axis=1)
            else:
                p = p.to(CT)
                top = tl.max(tl.where(inside, p, 0.0), axis=1)
                moment = tl.sum(tl.where(inside, result * (p - top[:, None]), 0.0), axis=1)
            counted = _usable(c) & (n > 0)
            if PER_SCALE and LIN:  # λ's: c² ∂L/∂c for c = 1/(1 − λ)
                moment = moment * c
            elif PER_SCALE:
                moment = divide(moment, tl.where(counted, c, 1.0))
            moment = tl.where(counted, moment, 0.0)
            result = _scaled_vjp(result, c[:, None])
            if CONE_TERM:
                factor = tl.load(factor_ptr + rows, mask=row_ok, other=0.0).to(CT)
                term = (factor * c * moment)[:, None]
                kept = _kept_entries(keep_ptr, rows, cols, stride_mo, stride_mi, mask_inner,
                                     stride_mk, ok, HAS_MASK)  # fmt: skip
                result = result + tl.where(kept, term, 0.0)
                if Q_SLOPE:
                    moment = moment * tl.load(slope_ptr + rows, mask=row_ok, other=0.0).to(CT)
            tl.store(moment_ptr + rows, moment, mask=row_ok)
        else:
            result = result * c[:, None]
    if TRANSFORM != 0:
        raw = tl.load(
            row_start(z_ptr, rows, stride_zo, stride_zi, z_inner)[:, None]
            + cols[None, :] * stride_zk, mask=ok, other=0.0,
        )  # fmt: skip
        kept = _kept_entries(keep_ptr, rows, cols, stride_mo, stride_mi, mask_inner, stride_mk,
                             ok, HAS_MASK)  # fmt: skip
        top = tl.load(top_ptr + rows, mask=row_ok, other=1.0).to(CT)[:, None]
        if TRANSFORM == 1:  # (the exp's derivative is gap + 1: the gap as the forward's)
            saved = gap_transform(raw, kept, top, CT, 0)
        else:
            saved = raw.to(CT)
        result = transform_derivative(saved, result, top, kept, TRANSFORM - 1)
    res_rows = row_start(res_ptr, rows, stride_ro, stride_ri, res_inner)
    tl.store(
        res_rows[:, None] + cols[None, :] * stride_rk, result.to(res_ptr.dtype.element_ty), mask=ok
    )


@triton.jit
def _vjp_partial_kernel(
    p_ptr,
    stride_po,
    stride_pi,
    p_inner,
    stride_pk,
    g_ptr,
    stride_go,
    stride_gi,
    g_inner,
    stride_gk,
    part_count_ptr,
    part_total_ptr,
    part_top_ptr,
    K,
    NC,
    CT: tl.constexpr,
    MOMENT: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """The VJP of long rows, program ``(row, chunk)``: the chunk's support size and sum of
    ``g`` over its support, into ``part_count``/``part_total[row, chunk]`` (with
    ``MOMENT``, its largest ``p`` into ``part_top``)."""
    row, chunk = split_program(K, CHUNK)
    cols = chunk.to(tl.int64) * CHUNK + tl.arange(0, CHUNK)
    ok = cols < K
    p_row = row_start(p_ptr, row, stride_po, stride_pi, p_inner)
    p = tl.load(p_row + cols * stride_pk, mask=ok, other=0.0)
    g_row = row_start(g_ptr, row, stride_go, stride_gi, g_inner)
    g = tl.load(g_row + cols * stride_gk, mask=ok, other=0.0).to(CT)
    inside = (p > 0) & ok
    tl.store(part_count_ptr + row * NC + chunk, tl.sum(inside.to(tl.int32), axis=0))
    tl.store(part_total_ptr + row * NC + chunk, tl.sum(tl.where(inside, g, 0.0), axis=0))
    if MOMENT:
        top = tl.max(tl.where(inside, p.to(CT), 0.0), axis=0)
        tl.store(part_top_ptr + row * NC + chunk, top)


# (scale_arg: a pointer, or a float's bits, any integer: never specialised to a constant)
@triton.jit(do_not_specialize=["scale_arg"])
def _vjp_write_kernel(
    p_ptr,
    stride_po,
    stride_pi,
    p_inner,
    stride_pk,
    g_ptr,
    stride_go,
    stride_gi,
    g_inner,
    stride_gk,
    scale_arg,
    stride_s,
    part_count_ptr,
    part_total_ptr,
    part_top_ptr,
    part_moment_ptr,
    res_ptr,
    stride_ro,
    stride_ri,
    res_inner,
    stride_rk,
    K,
    NC,
    CT: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    SCALE_BITS: tl.constexpr,
    MOMENT: tl.constexpr,
    CHUNK: tl.constexpr,
    PART_BLOCK: tl.constexpr,
):
    """The VJP of long rows, program ``(row, chunk)``: the support's mean of ``g`` from the
    row's partials, then the chunk's ``c · s ⊙ (g − mean)``; reference:
    :func:`sparsegen._projection.vjp_torch`. With ``MOMENT``, the chunk's part of the
    row's moment into ``part_moment`` (as :func:`_vjp_short_kernel`)."""
    row, chunk = split_program(K, CHUNK)
    parts = tl.arange(0, PART_BLOCK)
    acc_count = tl.zeros([PART_BLOCK], tl.int32)
    acc_total = tl.zeros([PART_BLOCK], CT)
    acc_top = tl.zeros([PART_BLOCK], CT)
    for start in range(0, NC, PART_BLOCK):
        idx = start + parts
        acc_count += tl.load(part_count_ptr + row * NC + idx, mask=idx < NC, other=0)
        acc_total += tl.load(part_total_ptr + row * NC + idx, mask=idx < NC, other=0.0)
        if MOMENT:
            tops = tl.load(part_top_ptr + row * NC + idx, mask=idx < NC, other=0.0)
            acc_top = tl.maximum(acc_top, tops)
    n = tl.sum(acc_count, axis=0)
    mean = divide(tl.sum(acc_total, axis=0), tl.maximum(n, 1).to(CT))
    cols = chunk.to(tl.int64) * CHUNK + tl.arange(0, CHUNK)
    ok = cols < K
    p_row = row_start(p_ptr, row, stride_po, stride_pi, p_inner)
    p = tl.load(p_row + cols * stride_pk, mask=ok, other=0.0)
    g_row = row_start(g_ptr, row, stride_go, stride_gi, g_inner)
    g = tl.load(g_row + cols * stride_gk, mask=ok, other=0.0).to(CT)
    inside = (p > 0) & ok
    result = tl.where(inside, g - mean, 0.0)
    if HAS_SCALE:
        if SCALE_BITS:  # (a float scale, passed as its bits)
            c = scale_arg.to(tl.int64).to(tl.float64, bitcast=True).to(CT)
        else:
            c = tl.load(scale_arg + row * stride_s).to(CT)
        if MOMENT:
            top = tl.max(acc_top, axis=0)
            part = tl.sum(tl.where(inside, result * (p.to(CT) - top), 0.0), axis=0)
            counted = _usable(c) & (n > 0)
            tl.store(part_moment_ptr + row * NC + chunk, tl.where(counted, part, 0.0))
            result = _scaled_vjp(result, c)
        else:
            result = result * c
    res_row = row_start(res_ptr, row, stride_ro, stride_ri, res_inner)
    tl.store(res_row + cols * stride_rk, result.to(res_ptr.dtype.element_ty), mask=ok)


# ----- launchers -------------------------------------------------------------------------


# Set while an operator's body is traced (torch.compile, make_fx): see wrap_triton.
_TRACED_LAUNCHES: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "sparsegen_traced_launches", default=False
)


@contextlib.contextmanager
def traced_launches() -> Iterator[None]:
    """Launches inside are made visible to torch's tracing (:func:`wrap_triton`): for the
    body of a ``torch.library.triton_op``, which ``torch.compile`` traces into so that
    inductor calls the kernels itself."""
    token = _TRACED_LAUNCHES.set(True)
    try:
        yield
    finally:
        _TRACED_LAUNCHES.reset(token)


def wrap_triton(kernel):
    """``kernel`` as :func:`torch.library.wrap_triton` wraps it inside
    :func:`traced_launches`, so that a trace records its launch (and a fake tensor's
    launch does nothing); the kernel itself elsewhere, since launching through the
    wrapper's higher-order operator costs more than a short row's projection. The name
    is torch's: ``triton_op`` finds an operator's kernels by their calls to it."""
    return torch.library.wrap_triton(kernel) if _TRACED_LAUNCHES.get() else kernel


def holds_on_chip(t: torch.Tensor, max_short_k: int = MAX_SHORT_K) -> bool:
    """Whether the kernels hold ``t``'s rows (its last dimension) on chip, a block of rows a
    program, rather than split them across programs."""
    return t.shape[-1] <= max_short_k


def _compute_type(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _short_blocks(
    rows: int, k: int, block_elements: int, device: torch.device
) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_K, num_warps)`` for rows of ``k`` held on chip: about
    ``block_elements`` entries a program, but fewer rows a program where that would leave
    some of the device's processors without one (4096 rows of 16 in blocks of 4096 would
    be 16 programs for the H200's 132 SMs)."""
    block_k = triton.next_power_of_2(k)
    block_m = max(1, min(block_elements // block_k, triton.next_power_of_2(rows)))
    wanted = min(processors(device), rows)  # programs
    while block_m > 1 and triton.cdiv(rows, block_m) < wanted:
        block_m //= 2
    num_warps = min(16, max(4, block_m * block_k // 1024))
    return block_m, block_k, num_warps


@functools.cache  # asked at every launch of the short kernels: looked up once a device
def processors(device: torch.device) -> int:
    """The device's streaming multiprocessors (1 off CUDA: the interpreter runs programs
    one by one). A device property: no call waits for the device."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


class SplitLaunch(NamedTuple):
    """How a split path's kernels launch over rows of ``K`` entries in chunks."""

    chunks: int  # chunks a row
    grid: tuple[int]  # a program a (row, chunk): split_program
    num_warps: int
    part_block: int  # the per-chunk partials a program reads at a time


def split_launch(rows: int, k: int, chunk: int) -> SplitLaunch:
    n_chunks = triton.cdiv(k, chunk)
    part_block = min(MAX_PART_BLOCK, triton.next_power_of_2(n_chunks))
    grid = (rows * n_chunks,)
    return SplitLaunch(n_chunks, grid, min(16, max(4, chunk // 512)), part_block)


def _per_row(t: torch.Tensor, batch: torch.Size, rows: int, device: torch.device) -> torch.Tensor:
    """A tensor broadcastable to ``(*batch, 1)`` as a 1-D view of one value per row on
    ``device`` (a copy only where its broadcast cannot be viewed so, or it lives
    elsewhere, e.g. a CPU scalar)."""
    return moved(t.detach(), device).expand(*batch, 1).reshape(rows)


def project_triton(
    z: torch.Tensor,
    scale: torch.Tensor | float | None,
    cone: ConeScale | None,
    info: bool = True,
    keep_scale: bool = True,
    mask: torch.Tensor | None = None,
    *,
    factor: torch.Tensor | None = None,
    q_slope: torch.Tensor | None = None,
    lin: bool = False,
    max_short_k: int = MAX_SHORT_K,
    chunk: int = LONG_CHUNK,
    block_elements: int = BLOCK_ELEMENTS,
    candidates: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """:func:`sparsegen._projection.project_torch` by the Triton kernels: ``(output, tau,
    support, computed_scale)``, the contract of
    :func:`sparsegen._projection.project_compiled`.

    ``z``: float16/bfloat16/float32 (computed in float32) or float64 (in
    float64), non-empty (the operator answers empty ones), any shape and strides,
    projected along its last dimension.
    ``scale``: None, a float, or a tensor broadcastable to ``(*batch, 1)`` (ignored when
    ``cone`` is given). ``cone``: a :class:`ConeScale` (q a float or a tensor
    broadcastable to ``(*batch, 1)``), its scale computed in the kernel from a
    float64 sum over the kept entries. ``mask``: boolean, broadcastable to
    ``z``, True = keep. ``info=False`` returns None for ``tau`` and ``support``,
    ``keep_scale=False`` None for the computed scale. ``factor``: a buffer of one value
    a row in the compute dtype, into which the cone's rows write their
    :meth:`~sparsegen._projection.ConeScale.factor` (what its backward needs of the
    scores: the sign of their sum, the count of the kept ones). ``q_slope``: a buffer of
    the same kind, into which the cone's rows write ``∂ log α/∂q``
    (:func:`~sparsegen._triton_math.cone_q_slope`: a learnt q's gradient is the
    backward's moment times it). ``lin``: ``scale`` is
    sparsegen-lin's λ (a tensor), and the kernels project by ``1/(1 − λ)``, NaN where λ is
    not < 1, which they return as the computed scale.

    ``max_short_k``, ``chunk``, ``block_elements`` and ``candidates`` choose the
    path and the block sizes (rows of ``K > max_short_k`` are split into chunks of
    ``chunk``, a power of two, with ``candidates`` slots a row, see
    :func:`_capacity`); the defaults suit a GPU, tests lower them.
    """
    k = z.shape[-1]
    batch = z.shape[:-1]
    rows, source = scores_source(z, mask)
    per_row = _per_row_args(z, batch, rows, scale, cone)
    output = empty_rows(z)
    tau = torch.empty(batch, dtype=z.dtype, device=z.device)
    computes = cone is not None or lin  # (the scale: written, as the kernels computed it)
    alpha = tau  # a placeholder, never written, where the scale is not computed
    if computes:  # in the compute dtype: a half type would overflow where it is large
        alpha = torch.empty((*batch, 1), dtype=compute_dtype(z.dtype), device=z.device)
    flags = _projection_flags(z, mask, scale, cone, factor is not None, lin, q_slope is not None)
    placeholder = alpha  # (a pointer for what is not written)
    results = (output, tau, alpha, *(placeholder if t is None else t for t in (factor, q_slope)))
    if k <= max_short_k:
        support = _project_short(source, per_row, results, rows, k, flags, block_elements)
    else:
        cap = _capacity(k, candidates)
        support = _project_split(source, per_row, results, rows, k, flags, chunk, cap)
    computed = alpha if computes and keep_scale else None
    if not info:
        return output, None, None, computed
    return output, tau, support.view(batch), computed


def scores_source(z: torch.Tensor, mask: torch.Tensor | None) -> tuple[int, tuple]:
    """``(row count, source)``: the kernels' first arguments, ``z``'s rows (its slices along
    the last dimension) and then the mask's, each as :func:`rows_arg` passes them."""
    k = z.shape[-1]
    rows = math.prod(z.shape[:-1])
    return rows, (*rows_arg(z.detach(), rows, k), *_mask_arg(mask, z, rows, k))


def rows_arg(t: torch.Tensor, rows: int, k: int) -> tuple[torch.Tensor, int, int, int, int]:
    """``(t, stride_outer, stride_inner, inner, stride_k)``: a tensor of ``rows`` rows of
    ``k`` as the kernels read it, its rows an ``(outer, inner)`` grid of strides
    (:func:`row_start`), in place; copied only where its rows need more than two strides
    (a transposed batch of 3-D+ slices)."""
    grid = _row_grid(t.shape[:-1], t.stride()[:-1])
    if grid is None:
        t = t.reshape(rows, k)
        grid = _row_grid(t.shape[:-1], t.stride()[:-1])
    (outer_stride, _), (inner_stride, inner) = grid
    return t, outer_stride, inner_stride, inner, t.stride(-1)


def _projection_flags(z, mask, scale, cone, factor=False, lin=False, q_slope=False):
    """The projection kernels' flags for scores ``z``: the ``scale`` given (a float, or one
    a row; with ``lin``, sparsegen-lin's λ, one a row, of which the kernels compute the
    scale) or the cone's computed (its q a float or one a row; its factor and the slope
    to a tensor q written or not), or neither."""
    cone_on = cone is not None
    if (factor or q_slope) and not cone_on:
        raise ValueError("project_triton: a factor and a q slope are the cone's; got no cone")
    if lin and (cone_on or not isinstance(scale, torch.Tensor)):
        raise ValueError("project_triton: lin takes λ as the scale tensor, and no cone")
    return dict(
        SCALE_MAX=float(torch.finfo(compute_dtype(z.dtype)).max),
        CT=_compute_type(z.dtype),
        F64=z.dtype == torch.float64,
        HAS_MASK=mask is not None,
        HAS_SCALE=not cone_on and scale is not None,
        CONE=cone_on,
        MIRROR=cone_on and bool(cone.mirror),
        LIN=lin,
        Q_BITS=cone_on and not isinstance(cone.q, torch.Tensor),
        FACTOR=factor,
        Q_SLOPE=q_slope,
        SCALE_BITS=not cone_on and isinstance(scale, float),
    )


def empty_rows(like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An output for the rows of ``like`` in the layout of ``torch.empty_like(like)`` where
    the kernels can write it (its rows an ``(outer, inner)`` grid, see :func:`rows_arg`),
    else contiguous: ``sparsegen._projection.in_layout`` then copies it into that layout."""
    out = torch.empty_like(like, dtype=dtype)
    if _row_grid(out.shape[:-1], out.stride()[:-1]) is None:
        out = torch.empty(like.shape, dtype=out.dtype, device=like.device)
    return out


def output_arg(out: torch.Tensor, rows: int, k: int) -> tuple[torch.Tensor, int, int, int, int]:
    """An output of :func:`empty_rows` as :func:`rows_arg` passes it, for the kernels to write
    in place."""
    arg = rows_arg(out, rows, k)
    if arg[0] is not out:  # a copy: what the kernels wrote would be lost
        raise RuntimeError(f"output_arg: rows of strides {out.stride()} cannot be written")
    return arg


def _mask_arg(mask, z, rows, k):
    """``(keep, stride_mo, stride_mi, mask_inner, stride_mk)``: the mask broadcast to ``z``
    (bool, which Triton reads a byte an entry) as :func:`rows_arg` passes it (a mask
    broadcast over rows is read in place); a placeholder pointer (never read) without one.
    Not viewed as uint8: inductor before torch 2.13 cannot lower that view of a bool
    tensor."""
    if mask is None:
        return z, 0, 0, 1, 0
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor; got {mask.dtype}")
    return rows_arg(mask.expand(z.shape), rows, k)


def _row_grid(sizes, strides) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The batch dimensions ``sizes`` with ``strides`` as ``((outer stride, outer size),
    (inner stride, inner size))`` (dimensions merged where one stride steps over the next),
    or None where they need more than two strides."""
    merged: list[tuple[int, int]] = []
    for size, stride in zip(sizes, strides, strict=True):
        if size == 1:
            continue
        if merged and merged[-1][0] == stride * size:
            merged[-1] = (stride, merged[-1][1] * size)
        else:
            merged.append((stride, size))
    if len(merged) > 2:
        return None
    # one dimension as the outer one: an inner size of 1, which Triton specialises,
    # makes the kernels' row // inner and row % inner constants
    return tuple(merged + [(0, 1)] * (2 - len(merged)))


def float_bits(number: float) -> int:
    """The bits of ``number`` as a float64, an integer for a kernel's argument (read back by
    :func:`sparsegen._triton_math.number_of_bits`): a float argument is float32 there."""
    return struct.unpack("<q", struct.pack("<d", number))[0]


def _per_row_args(z, batch, rows, scale, cone):
    """``(scale, stride, q, stride)``: the given scale and the cone's ``q`` as
    :func:`_row_values_arg` passes them (``z``: the placeholder where one is not used)."""
    scale_arg, stride_s = _row_values_arg(scale if cone is None else None, batch, rows, z)
    q_arg, stride_q = _row_values_arg(None if cone is None else cone.q, batch, rows, z)
    return scale_arg, stride_s, q_arg, stride_q


def _row_values_arg(value, batch, rows, placeholder):
    """``(arg, stride)``: a kernel's argument of one value a row: a tensor as one value per
    row (:func:`_per_row`), a number as its float64 bits (read back by
    :func:`~sparsegen._triton_math.number_of_bits`), and for None ``placeholder``, a
    pointer never read."""
    if value is None:
        return placeholder, 0
    if isinstance(value, torch.Tensor):
        arg = _per_row(value, batch, rows, placeholder.device)
        return arg, arg.stride(0)
    return float_bits(float(value)), 0


def _project_short(source, per_row, results, rows, k, flags, block_elements, transform=0):
    """Launches :func:`_project_short_kernel` and returns the support counts."""
    output, tau, alpha, factor, slope = results
    support = torch.empty(rows, dtype=torch.int64, device=output.device)
    block_m, block_k, num_warps = _short_blocks(rows, k, block_elements, output.device)
    grid = (triton.cdiv(rows, block_m),)
    out = output_arg(output, rows, k)
    wrap_triton(_project_short_kernel)[grid](
        *source, *per_row, *out, tau, support, alpha, factor, slope, rows, k, **flags,
        TRANSFORM=transform, BLOCK_M=block_m, BLOCK_K=block_k, num_warps=num_warps,
    )  # fmt: skip
    return support


def project_transformed_triton(
    z: torch.Tensor,
    mask: torch.Tensor | None,
    kind: str,
    log_c: float | torch.Tensor,
    *,
    saved: bool = False,
    max_short_k: int = MAX_SHORT_K,
    block_elements: int = BLOCK_ELEMENTS,
) -> tuple[torch.Tensor, ...] | None:
    """Sparsegen-exp's (``kind="exp_gap"``) or -sq's (``"square_gap"``) projection straight
    from the scores, in one pass over rows held on chip: ``(output, threshold, support)``,
    the gaps of :mod:`sparsegen._triton_transform` projected with the scale
    ``e^top/(1 − λ)`` or ``top²/(1 − λ)`` (``log_c = −log(1 − λ)``, a float or a tensor
    broadcastable to one per slice), so the transformed scores never reach memory. The
    contract of :func:`sparsegen._projection.project_transformed_compiled`; None for rows
    longer than ``max_short_k`` (the caller transforms, then projects). With ``saved``,
    also each row's scale and top (``(*batch, 1)``, in the compute dtype): what
    :func:`vjp_triton`'s ``transform`` takes."""
    k = z.shape[-1]
    if k > max_short_k or kind not in TRANSFORMS[:2]:
        return None
    batch = z.shape[:-1]
    rows, source = scores_source(z, mask)
    per_row = _per_row_args(z, batch, rows, log_c, None)  # the scale's place holds log c
    output = empty_rows(z)
    tau = torch.empty(batch, dtype=z.dtype, device=z.device)
    flags = _projection_flags(z, mask, log_c, None)
    transform = 1 + TRANSFORMS.index(kind)
    results = (output, tau, tau, tau, tau)
    if saved:  # (written where the cone's scale and factor go)
        like = {"dtype": compute_dtype(z.dtype), "device": z.device}
        scale, top = (torch.empty((*batch, 1), **like) for _ in range(2))
        results = (output, tau, scale, top, tau)
        flags["FACTOR"] = True
    support = _project_short(source, per_row, results, rows, k, flags, block_elements, transform)
    support = support.view(batch)
    return (output, tau, support, *results[2:4]) if saved else (output, tau, support)


def _capacity(k: int, candidates: int | None) -> int:
    """Candidate slots per row on the split path: ``candidates`` (at most ``k``), by default
    ``MAX_CANDIDATES`` but at most a quarter of the row (their float32/float64 buffer stays
    small next to the scores)."""
    if candidates is not None:
        return max(1, min(candidates, k))
    return max(1, min(MAX_CANDIDATES, k // 4))


def _project_split(source, per_row, results, rows, k, flags, chunk, cap):
    """Launches kernels A to D (all grids fixed by the shapes) and returns the support
    counts, ``(rows,)`` int64."""
    output, tau, alpha, factor, slope = results
    device = output.device
    n_chunks, grid, num_warps, part_block = split_launch(rows, k, chunk)
    values = torch.float64 if flags["F64"] else torch.float32
    part_max = torch.empty((rows, n_chunks), dtype=values, device=device)
    part_count = torch.empty((rows, 4, n_chunks), dtype=torch.int32, device=device)
    part_sum = part_max  # a placeholder pointer without a cone (never read)
    if flags["CONE"]:
        part_sum = torch.empty((rows, 2, n_chunks), dtype=torch.float64, device=device)
    parts = (part_max, part_count, part_sum)
    row_value = torch.empty((rows, 3), dtype=values, device=device)  # top, c, τ
    row_flag = torch.empty((rows, 3), dtype=torch.int32, device=device)  # bad, NaN row, #+inf
    candidates = torch.empty((rows, cap), dtype=values, device=device)
    found = torch.empty(rows, dtype=torch.int32, device=device)  # candidates a row
    support = torch.empty(rows, dtype=torch.int64, device=device)  # (both zeroed by kernel A)
    common = dict(CT=flags["CT"], HAS_MASK=flags["HAS_MASK"], CHUNK=chunk)
    wrap_triton(_split_stats_kernel)[grid](
        *source, *parts, found, support, k, n_chunks, F64=flags["F64"], CONE=flags["CONE"],
        **common, num_warps=num_warps,
    )  # fmt: skip
    wrap_triton(_split_candidates_kernel)[grid](
        *source, *per_row, *parts, row_value, row_flag, alpha, factor, slope, candidates, found,
        rows, k, n_chunks, cap, **flags, CHUNK=chunk, PART_BLOCK=part_block,
        num_warps=num_warps,
    )  # fmt: skip
    wrap_triton(_split_newton_kernel)[(rows,)](
        *source, row_value, row_flag, candidates, found, tau, k, cap, **common,
        SAMPLE=FLAT_SAMPLE, num_warps=num_warps,
    )  # fmt: skip
    out = output_arg(output, rows, k)
    wrap_triton(_split_write_kernel)[grid](
        *source, row_value, row_flag, *out, support, k, **common, num_warps=num_warps
    )
    return support


def vjp_triton(
    output: torch.Tensor,
    support: torch.Tensor | None,
    grad: torch.Tensor,
    scale: torch.Tensor | float | None,
    *,
    transform: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, str] | None = None,
    max_short_k: int = MAX_SHORT_K,
    chunk: int = LONG_CHUNK,
    block_elements: int = BLOCK_ELEMENTS,
) -> torch.Tensor:
    """``Jᵀ g`` for ``z ↦ sparsemax(c z)``, ``c · s ⊙ (g − mean_{j∈S} g_j)`` with ``S =
    {output > 0}`` counted in the kernel (``support`` is not read): the Triton
    version of :func:`sparsegen._projection.vjp_torch`, in ``grad``'s dtype as that is.
    Computed in float32 (float64 for a float64 result); ``scale`` None, a float, or
    broadcastable to ``(*batch, 1)``, not capped
    (as in ``vjp_torch``). Rows on chip as :func:`project_triton`'s; rows of ``K >
    max_short_k`` split into chunks of ``chunk`` across programs.

    ``transform``: ``(scores, mask, top, kind)`` where the output is
    :func:`project_transformed_triton`'s (with its ``saved`` scale and top; rows held on
    chip): the gradient of the scores, through the transform's derivative, in the same
    launch."""
    knobs = {"max_short_k": max_short_k, "chunk": chunk, "block_elements": block_elements}
    if transform is not None and output.shape[-1] > max_short_k:
        raise ValueError("vjp_triton: a transform's rows are held on chip; got longer ones")
    return _launch_vjp(output, grad, scale, None, transform=transform, **knobs)


def scaled_vjp_triton(
    output: torch.Tensor,
    support: torch.Tensor | None,
    grad: torch.Tensor,
    scale: torch.Tensor,
    *,
    per_scale: bool = False,
    lin: bool = False,
    scores: torch.Tensor | None = None,
    transform: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, str] | None = None,
    max_short_k: int = MAX_SHORT_K,
    chunk: int = LONG_CHUNK,
    block_elements: int = BLOCK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The VJP for a scale that takes a gradient, in one launch (two for split rows): ``c·u``
    and each slice's moment ``Σ_S u_j (out_j − max out)`` in the scale's dtype and shape
    ``(*batch, 1)``, a slice whose scale is 0, inf or NaN getting ``u·scale`` (0 for ``0 ·
    inf``) and a moment of 0; with ``per_scale``, the moment divided by the scale, which is
    the scale's gradient, and with ``lin`` too the gradient of sparsegen-lin's λ where the
    scale is ``1/(1 − λ)``: ``c² ∂L/∂c``, the moment times the scale. The Triton version of
    :func:`sparsegen._projection.scaled_vjp_compiled` (``grad``, ``scale`` and ``output``
    of one dtype, float32 or float64). ``scores``: the forward's scores (rows held on
    chip), of which the moment is ``c Σ_S u_j z_j`` instead: for half outputs and
    gradients, with the scale in float32. ``transform``: as :func:`vjp_triton`'s (the
    moment is then of the projected gaps, ``c ∂L/∂c`` of their scale ``c``)."""
    rows = output.numel() // max(output.shape[-1], 1)
    # (every row's moment is written, but for an empty slice's, which no launch reaches)
    allocate = torch.zeros if output.numel() == 0 else torch.empty
    moment = allocate(rows, dtype=scale.dtype, device=output.device)
    knobs = {"max_short_k": max_short_k, "chunk": chunk, "block_elements": block_elements}
    gradient = ("lam" if lin else "scale") if per_scale else None
    if transform is not None and (scores is not None or not holds_on_chip(output, max_short_k)):
        raise ValueError(
            "scaled_vjp_triton: through a transform, rows held on chip and the output's moment"
        )
    result = _launch_vjp(
        output, grad, scale, moment, gradient=gradient, scores=scores, transform=transform,
        **knobs,
    )  # fmt: skip
    return result, moment.reshape(*output.shape[:-1], 1)


def cone_vjp_triton(
    output: torch.Tensor,
    grad: torch.Tensor,
    scale: torch.Tensor,
    factor: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    q_slope: torch.Tensor | None = None,
    scores: torch.Tensor | None = None,
    max_short_k: int = MAX_SHORT_K,
    chunk: int = LONG_CHUNK,
    block_elements: int = BLOCK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole VJP of ``z ↦ sparsemax(α(z) z)`` for sparsecone's or sparsehourglass's
    ``α`` computed from the scores: ``c·u`` plus ``factor · c · moment`` at each entry
    ``mask`` keeps, where ``scale`` is each row's α and ``factor`` its
    :meth:`~sparsegen._projection.ConeScale.factor` (both ``(*batch, 1)``, as the forward
    wrote them), and ``c`` the scale where it is finite and 0 elsewhere (an overflowed α's
    slice is the limit: locally constant); and the moment ``Σ_S u_j (out_j − max out)``
    (``(*batch, 1)``, 0 where ``c`` is), or with ``q_slope`` (the forward's ``∂ log α/∂q``,
    ``(*batch, 1)``) the moment times it: a learnt q's gradient. One launch for rows held
    on chip; split rows add the term, and the slope, by torch ops.
    Reference: the unfused composition in :func:`sparsegen._ops._project_backward`;
    ``grad``, ``scale``, ``factor`` and ``output`` of one dtype, float32 or float64, or
    half ``grad`` and ``output`` with the forward's ``scores`` (rows held on chip, see
    :func:`scaled_vjp_triton`)."""
    knobs = {"max_short_k": max_short_k, "chunk": chunk, "block_elements": block_elements}
    if output.shape[-1] > max_short_k:  # (the moment is summed over the chunks first)
        c = torch.nan_to_num(scale, nan=0.0, posinf=0.0, neginf=0.0)
        result, moment = scaled_vjp_triton(output, None, grad, c, scores=scores, **knobs)
        result = add_where_kept(result, mask, factor * c * moment)
        return result, moment if q_slope is None else moment * q_slope
    rows = output.numel() // max(output.shape[-1], 1)
    moment = torch.empty(rows, dtype=scale.dtype, device=output.device)
    cone_term = (factor, mask, q_slope)
    result = _launch_vjp(output, grad, scale, moment, cone_term=cone_term, scores=scores, **knobs)
    return result, moment.reshape(*output.shape[:-1], 1)


def _launch_vjp(
    output, grad, scale, moment, max_short_k, chunk, block_elements, gradient=None,
    cone_term=None, transform=None, scores=None,
):  # fmt: skip
    """:func:`vjp_triton`'s launch, with a ``moment`` buffer (one value a row)
    :func:`scaled_vjp_triton`'s (``gradient``: None, or the moment made the gradient of
    ``"scale"`` or ``"lam"``; ``scores``: the moment's, rows held on chip), and with a
    ``cone_term`` ``(factor, mask, q_slope)`` (rows held on chip) :func:`cone_vjp_triton`'s."""
    dtype = grad.dtype
    result = empty_rows(output, dtype)
    if output.numel() == 0:
        return result
    k = output.shape[-1]
    batch = output.shape[:-1]
    rows = math.prod(batch)
    scale_arg, stride_s = _row_values_arg(scale, batch, rows, output)
    # the output and the gradient read in place, as the scores are
    p = rows_arg(output.detach(), rows, k)
    g = rows_arg(grad.detach().expand(output.shape), rows, k)
    inputs = (*p, *g, scale_arg, stride_s)
    flags = dict(CT=_compute_type(dtype), HAS_SCALE=scale is not None,
                 SCALE_BITS=isinstance(scale, float), MOMENT=moment is not None)  # fmt: skip
    if k <= max_short_k:
        flags.update(PER_SCALE=gradient is not None, LIN=gradient == "lam")
        kept = (cone_term, transform, scores)
        _vjp_short(inputs, result, moment, rows, k, flags, block_elements, *kept)
    elif scores is not None:
        raise ValueError("scaled_vjp_triton: a moment of the scores is for rows held on chip")
    else:
        _vjp_split(inputs, result, moment, rows, k, flags, chunk)
        if gradient is not None:  # (the chunks' parts summed first, as on chip)
            c = inputs[-2].reshape(moment.shape).to(moment.dtype)
            to_lam = gradient == "lam"
            moment.copy_(_moment_per_lam(moment, c) if to_lam else moment_per_scale(moment, c))
    return result


def _moment_per_lam(moment: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A scaled VJP's moment as the gradient of sparsegen-lin's λ, whose scale is
    ``1/(1 − λ)``: ``c² ∂L/∂c``, the moment times the scale; 0 where the scale is 0, inf or
    NaN, as :func:`~sparsegen._projection.moment_per_scale` gives."""
    return torch.where(torch.isfinite(scale) & (scale != 0), moment * scale, 0.0)


def _vjp_short(
    inputs, result, moment, rows, k, flags, block_elements, cone_term, transform, scores
):
    """Launches :func:`_vjp_short_kernel`, with the cone's term (``cone_term``: ``(factor,
    mask, q_slope)``), through a transform (``transform``: ``(scores, mask, top, kind)``),
    or with the moment of the forward's ``scores``."""
    batch, device = result.shape[:-1], result.device
    factor, mask, slope = cone_term or (None, None, None)
    scores_moment = scores is not None
    top, kind = result, None  # (placeholder pointers, never read)
    if transform is not None:
        scores, mask, top, kind = transform
        top = _per_row(top, batch, rows, device)
    scores = result if scores is None else scores  # (without either: a pointer never read)
    factor_arg, slope_arg = (
        result if t is None else _per_row(t, batch, rows, device) for t in (factor, slope)
    )
    block_m, block_k, num_warps = _short_blocks(rows, k, block_elements, device)
    wrap_triton(_vjp_short_kernel)[(triton.cdiv(rows, block_m),)](
        *inputs, result if moment is None else moment, factor_arg, slope_arg,
        *_mask_arg(mask, result, rows, k), *rows_arg(scores.detach(), rows, k), top,
        *output_arg(result, rows, k), rows, k, **flags, SCORES_MOMENT=scores_moment,
        CONE_TERM=factor is not None, Q_SLOPE=slope is not None, HAS_MASK=mask is not None,
        TRANSFORM=0 if kind is None else 1 + TRANSFORMS.index(kind), BLOCK_M=block_m,
        BLOCK_K=block_k, num_warps=num_warps,
    )  # fmt: skip


def _vjp_split(inputs, result, moment, rows, k, flags, chunk):
    """Launches :func:`_vjp_partial_kernel` and :func:`_vjp_write_kernel`, a program a
    ``(row, chunk)``; with a ``moment``, the chunks' parts of it summed into it."""
    n_chunks, grid, num_warps, part_block = split_launch(rows, k, chunk)
    values = torch.float64 if result.dtype == torch.float64 else torch.float32
    part_count = torch.empty((rows, n_chunks), dtype=torch.int32, device=result.device)
    part_total = torch.empty((rows, n_chunks), dtype=values, device=result.device)
    # (placeholders, never read or written, without a moment)
    part_top = part_total if moment is None else torch.empty_like(part_total)
    part_moment = part_total if moment is None else torch.empty_like(part_total)
    wrap_triton(_vjp_partial_kernel)[grid](
        *inputs[:-2], part_count, part_total, part_top, k, n_chunks, CT=flags["CT"],
        MOMENT=flags["MOMENT"], CHUNK=chunk, num_warps=num_warps,  # no scale
    )  # fmt: skip
    wrap_triton(_vjp_write_kernel)[grid](
        *inputs, part_count, part_total, part_top, part_moment, *output_arg(result, rows, k), k,
        n_chunks, **flags, CHUNK=chunk, PART_BLOCK=part_block, num_warps=num_warps,
    )  # fmt: skip
    if moment is not None:
        moment.copy_(part_moment.sum(-1))
