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
steps, typically 3 to 8. The same gaps feed the Newton sums, the output
``[y − τ]_+`` and its support count (the count of positive outputs after the
cast to the output dtype), so ``support == (output > 0).sum(-1)`` always.

Two paths, chosen by a plain branch on the row length ``K`` in the launcher
(shapes only: the launchers never synchronise with the device):

* short rows (``K ≤ MAX_SHORT_K``): :func:`_project_short_kernel` holds a 2-D
  block of ``BLOCK_M`` rows × ``BLOCK_K`` (the next power of two ≥ K) on chip,
  ``BLOCK_M · BLOCK_K ≈ BLOCK_ELEMENTS``; program ``i`` takes rows
  ``[i·BLOCK_M, (i+1)·BLOCK_M)``, rows past the batch end masked. The rows of a
  block take their Newton steps together until none moves.
* long rows: :func:`_project_long_kernel`, one program per row, streams the row
  in chunks of ``CHUNK``: a statistics pass (maximum, special values, the
  cone scale's float64 sum), one pass per Newton step, and a write pass.

:func:`vjp_triton` computes ``c · s ⊙ (g − mean_{j∈S} g_j)`` with ``S = {output > 0}``
counted in the kernel, with the same two paths.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

if TYPE_CHECKING:
    from sparsegen._projection import ConeScale

__all__ = ["project_triton", "vjp_triton"]

# Rows up to this long are held on chip (a block of rows per program); longer
# rows are streamed in chunks of LONG_CHUNK, one row per program.
MAX_SHORT_K = 16384
# Elements per program on the short path (BLOCK_M · BLOCK_K).
BLOCK_ELEMENTS = 4096
LONG_CHUNK = 4096

_INF = tl.constexpr(float("inf"))
_NAN = tl.constexpr(float("nan"))


# ----- shared pieces -------------------------------------------------------------------


@triton.jit
def _cone_alpha(total, unit, kept, q, MIRROR: tl.constexpr):
    """Sparsecone's ``α = (1 + Kq)/(Σz + Kq)`` (NaN where the denominator is ≤ 0) or, with
    ``MIRROR``, sparsehourglass's ``α̂`` with ``|Σz|``, in float64, from ``Σz = unit ·
    total``: :func:`sparsegen._projection.cone_scale`, term for term; 1 for a row
    that keeps no entry (``kept == 0``)."""
    kq = kept.to(tl.float64) * q
    if MIRROR:
        s = tl.abs(total)
    else:
        s = total
    big = kq > 1e300
    inverse = 1.0 / tl.where(big, kq, 1.0)
    numerator = tl.where(big, 1.0 + inverse, (1.0 + kq) / unit)
    denominator = tl.where(big, s * (unit * inverse) + 1.0, s + kq / unit)
    infinite = tl.abs(kq) == _INF
    alpha = tl.where(infinite, 1.0, numerator / denominator)
    if not MIRROR:
        alpha = tl.where((denominator > 0) | infinite, alpha, _NAN)
    return tl.where(kept == 0, 1.0, alpha)


@triton.jit
def _wide(raw, F64: tl.constexpr):
    """Scores in float64 for the cone's sum: float64 scores as they are, the others by way
    of float32 (exact)."""
    if F64:
        return raw.to(tl.float64)
    return raw.to(tl.float32).to(tl.float64)


@triton.jit
def _gap(x, in_row, bad, top, c):
    """``c (x − top)``, the one rounding of each entry that the Newton sums, the output
    and the support share; -inf scores stay -inf (also under a zero scale). A bad
    row's entries are 0 (it is replaced by the special-value rules), so that its
    Newton loop ends at once; padding (``in_row`` False) stays -inf."""
    x = tl.where(bad & in_row, 0.0, x)
    return tl.where(x == -_INF, -_INF, (x - top) * c)


@triton.jit
def _finish(x, keep, y, tau, bad, nan_row, share, HAS_MASK: tl.constexpr):
    """The output entries: ``[y − τ]_+``, or a special row's (NaN, or ``share`` at the
    +inf scores, else 0); masked entries 0 even in a NaN row."""
    d = y - tau
    out = tl.where(d > 0, d, 0.0)
    special = tl.where(nan_row, _NAN, tl.where(x == _INF, share, 0.0))
    out = tl.where(bad, special, out)
    if HAS_MASK:
        out = tl.where(keep, out, 0.0)
    return out


@triton.jit
def _row_scale(
    rows,
    row_ok,
    total,
    unit,
    kept,
    q_ptr,
    stride_q,
    scale_ptr,
    stride_s,
    alpha_ptr,
    SCALE_MAX: tl.constexpr,
    CT: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    CONE: tl.constexpr,
    MIRROR: tl.constexpr,
    F64: tl.constexpr,
):
    """Each row's scale in the compute dtype, capped at the scores' dtype's largest value:
    the cone's (written to ``alpha_ptr`` in the scores' dtype first, and used as
    rounded there, as the torch code does), the given one, or 1."""
    if CONE:
        q = tl.load(q_ptr + rows * stride_q, mask=row_ok, other=1.0).to(tl.float64)
        alpha = _cone_alpha(total, unit, kept, q, MIRROR)
        if not F64:  # by way of float32, as torch casts float64 to a half type
            alpha = alpha.to(tl.float32)
        alpha = alpha.to(alpha_ptr.dtype.element_ty)
        tl.store(alpha_ptr + rows, alpha, mask=row_ok)
        c = alpha.to(CT)
    elif HAS_SCALE:
        c = tl.load(scale_ptr + rows * stride_s, mask=row_ok, other=1.0).to(CT)
    else:
        c = tl.zeros_like(rows).to(CT) + 1.0
    return tl.where(c > SCALE_MAX, SCALE_MAX, c)  # NaN stays NaN


# ----- forward: short rows, a block of rows per program --------------------------------


@triton.jit
def _project_short_kernel(
    z_ptr,
    stride_zr,
    stride_zk,
    keep_ptr,
    stride_mr,
    stride_mk,
    scale_ptr,
    stride_s,
    q_ptr,
    stride_q,
    out_ptr,
    tau_ptr,
    support_ptr,
    alpha_ptr,
    R,
    K,
    SCALE_MAX: tl.constexpr,
    CT: tl.constexpr,
    F64: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    CONE: tl.constexpr,
    MIRROR: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``BLOCK_M`` rows of ``K ≤ BLOCK_K`` entries, held on chip; reference:
    :func:`sparsegen._projection.project_torch`."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < R
    col_ok = cols < K
    ok = row_ok[:, None] & col_ok[None, :]
    raw = tl.load(z_ptr + rows[:, None] * stride_zr + cols[None, :] * stride_zk, mask=ok, other=0.0)
    if HAS_MASK:
        kept_flags = tl.load(
            keep_ptr + rows[:, None] * stride_mr + cols[None, :] * stride_mk, mask=ok, other=0
        )
        keep = (kept_flags != 0) & ok
    else:
        keep = ok
    x = tl.where(keep, raw.to(CT), -_INF)

    # The cone's sum over the kept entries, in float64 (in units of max |z| where a
    # float64 sum overflows, as kept_sum does).
    total = tl.zeros([BLOCK_M], tl.float64)
    unit = tl.zeros([BLOCK_M], tl.float64) + 1.0
    kept = tl.sum(keep.to(tl.int32), axis=1)
    if CONE:
        wide = tl.where(keep, _wide(raw, F64), 0.0)
        total = tl.sum(wide, axis=1)
        if F64:
            largest = tl.max(tl.abs(wide), axis=1)
            unit = tl.where((tl.abs(total) == _INF) & (largest < _INF), largest, 1.0)
            total = tl.sum(wide / unit[:, None], axis=1)
    c = _row_scale(
        rows,
        row_ok,
        total,
        unit,
        kept,
        q_ptr,
        stride_q,
        scale_ptr,
        stride_s,
        alpha_ptr,
        SCALE_MAX,
        CT,
        HAS_SCALE,
        CONE,
        MIRROR,
        F64,
    )

    # Special rows (special_rows): a NaN, no finite maximum, or a NaN scale.
    has_nan = tl.sum((x != x).to(tl.int32), axis=1) > 0
    n_pos = tl.sum((x == _INF).to(tl.int32), axis=1)
    n_neg = tl.sum(((x == -_INF) & col_ok[None, :]).to(tl.int32), axis=1)
    top = tl.max(x, axis=1)
    bad = has_nan | ((top == -_INF) | (top == _INF) | (top != top)) | (c != c)
    nan_row = has_nan | ((n_pos == 0) & (n_neg < K))
    share = 1.0 / tl.maximum(n_pos, 1).to(CT)
    special_tau = tl.where(nan_row, _NAN, tl.where(n_pos > 0, _INF, -_INF))
    top = tl.where(bad, 0.0, top)
    c = tl.where(bad, 1.0, c)

    y = _gap(x, col_ok[None, :], bad[:, None], top[:, None], c[:, None])

    # Newton from τ = −1 until no row's support shrinks.
    tau = tl.zeros([BLOCK_M], CT) - 1.0
    count = tl.zeros([BLOCK_M], tl.int32) + (K + 1)
    n_moving = tl.sum(row_ok.to(tl.int32), axis=0)
    while n_moving > 0:
        above = y > tau[:, None]
        new_count = tl.sum(above.to(tl.int32), axis=1)
        new_total = tl.sum(tl.where(above, y, 0.0), axis=1)
        new_tau = (new_total - 1.0) / new_count.to(CT)
        moving = new_count < count
        tau = tl.where(moving, new_tau, tau)
        count = tl.where(moving, new_count, count)
        n_moving = tl.sum(moving.to(tl.int32), axis=0)

    out = _finish(
        x, keep, y, tau[:, None], bad[:, None], nan_row[:, None], share[:, None], HAS_MASK
    ).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows[:, None] * K + cols[None, :], out, mask=ok)
    support = tl.sum(((out > 0) & ok).to(tl.int64), axis=1)
    tl.store(support_ptr + rows, support, mask=row_ok)
    tau_out = tl.where(bad, special_tau, tau + top * c)
    tl.store(tau_ptr + rows, tau_out.to(tau_ptr.dtype.element_ty), mask=row_ok)


# ----- forward: long rows, streamed in chunks, one row per program ---------------------


@triton.jit
def _load_chunk(
    z_row, stride_zk, keep_row, stride_mk, cols, K, CT: tl.constexpr, HAS_MASK: tl.constexpr
):
    """A chunk of a row: its raw scores, which are kept (in the row), and the scores in
    the compute dtype with -inf at the masked entries and the padding."""
    ok = cols < K
    raw = tl.load(z_row + cols * stride_zk, mask=ok, other=0.0)
    if HAS_MASK:
        keep = (tl.load(keep_row + cols * stride_mk, mask=ok, other=0) != 0) & ok
    else:
        keep = ok
    return raw, keep, tl.where(keep, raw.to(CT), -_INF)


@triton.jit
def _project_long_kernel(
    z_ptr,
    stride_zr,
    stride_zk,
    keep_ptr,
    stride_mr,
    stride_mk,
    scale_ptr,
    stride_s,
    q_ptr,
    stride_q,
    out_ptr,
    tau_ptr,
    support_ptr,
    alpha_ptr,
    R,
    K,
    SCALE_MAX: tl.constexpr,
    CT: tl.constexpr,
    F64: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    CONE: tl.constexpr,
    MIRROR: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """One row of any length per program, read in chunks of ``CHUNK``: a statistics pass,
    a pass per Newton step, a write pass; reference:
    :func:`sparsegen._projection.project_torch`."""
    row = tl.program_id(0).to(tl.int64)
    rows = row + tl.arange(0, 1)  # as a block of one, for the shared per-row helpers
    row_ok = rows < R
    z_row = z_ptr + row * stride_zr
    keep_row = keep_ptr + row * stride_mr
    out_row = out_ptr + row * K
    offs = tl.arange(0, CHUNK)

    acc_max = tl.full([CHUNK], -_INF, CT)
    acc_nan = tl.zeros([CHUNK], tl.int32)
    acc_pos = tl.zeros([CHUNK], tl.int32)
    acc_neg = tl.zeros([CHUNK], tl.int32)
    acc_kept = tl.zeros([CHUNK], tl.int32)
    acc_sum = tl.zeros([CHUNK], tl.float64)
    acc_abs = tl.zeros([CHUNK], tl.float64)
    for start in range(0, K, CHUNK):
        cols = start + offs
        raw, keep, x = _load_chunk(z_row, stride_zk, keep_row, stride_mk, cols, K, CT, HAS_MASK)
        acc_max = tl.where(x > acc_max, x, acc_max)
        acc_nan += (x != x).to(tl.int32)
        acc_pos += (x == _INF).to(tl.int32)
        acc_neg += ((x == -_INF) & (cols < K)).to(tl.int32)
        acc_kept += keep.to(tl.int32)
        if CONE:
            wide = tl.where(keep, _wide(raw, F64), 0.0)
            acc_sum += wide
            acc_abs = tl.maximum(acc_abs, tl.abs(wide))
    kept = tl.sum(acc_kept[None, :], axis=1)
    total = tl.sum(acc_sum[None, :], axis=1)
    unit = tl.zeros([1], tl.float64) + 1.0
    if CONE:
        if F64:  # float64 scores whose sum overflows: again, in units of max |z|
            largest = tl.max(acc_abs[None, :], axis=1)
            unit = tl.where((tl.abs(total) == _INF) & (largest < _INF), largest, 1.0)
            acc_sum = tl.zeros([CHUNK], tl.float64)
            for start in range(0, K, CHUNK):
                cols = start + offs
                raw, keep, x = _load_chunk(
                    z_row, stride_zk, keep_row, stride_mk, cols, K, CT, HAS_MASK
                )
                acc_sum += tl.where(keep, _wide(raw, F64), 0.0) / unit
            total = tl.sum(acc_sum[None, :], axis=1)
    c = _row_scale(
        rows,
        row_ok,
        total,
        unit,
        kept,
        q_ptr,
        stride_q,
        scale_ptr,
        stride_s,
        alpha_ptr,
        SCALE_MAX,
        CT,
        HAS_SCALE,
        CONE,
        MIRROR,
        F64,
    )

    has_nan = tl.sum(acc_nan[None, :], axis=1) > 0
    n_pos = tl.sum(acc_pos[None, :], axis=1)
    n_neg = tl.sum(acc_neg[None, :], axis=1)
    top = tl.max(acc_max[None, :], axis=1)
    bad = has_nan | ((top == -_INF) | (top == _INF) | (top != top)) | (c != c)
    nan_row = has_nan | ((n_pos == 0) & (n_neg < K))
    share = 1.0 / tl.maximum(n_pos, 1).to(CT)
    special_tau = tl.where(nan_row, _NAN, tl.where(n_pos > 0, _INF, -_INF))
    top = tl.where(bad, 0.0, top)
    c = tl.where(bad, 1.0, c)

    # Newton from τ = −1 until the support stops shrinking, a pass over the row each.
    tau = tl.zeros([1], CT) - 1.0
    count = tl.zeros([1], tl.int32) + (K + 1)
    n_moving = tl.sum(row_ok.to(tl.int32), axis=0)
    while n_moving > 0:
        acc_count = tl.zeros([1, CHUNK], tl.int32)
        acc_total = tl.zeros([1, CHUNK], CT)
        for start in range(0, K, CHUNK):
            cols = start + offs
            raw, keep, x = _load_chunk(z_row, stride_zk, keep_row, stride_mk, cols, K, CT, HAS_MASK)
            y = _gap(x[None, :], (cols < K)[None, :], bad[:, None], top[:, None], c[:, None])
            above = y > tau[:, None]
            acc_count += above.to(tl.int32)
            acc_total += tl.where(above, y, 0.0)
        new_count = tl.sum(acc_count, axis=1)
        new_tau = (tl.sum(acc_total, axis=1) - 1.0) / new_count.to(CT)
        moving = new_count < count
        tau = tl.where(moving, new_tau, tau)
        count = tl.where(moving, new_count, count)
        n_moving = tl.sum(moving.to(tl.int32), axis=0)

    acc_support = tl.zeros([1, CHUNK], tl.int64)
    for start in range(0, K, CHUNK):
        cols = start + offs
        raw, keep, x = _load_chunk(z_row, stride_zk, keep_row, stride_mk, cols, K, CT, HAS_MASK)
        ok = (cols < K)[None, :] & row_ok[:, None]
        y = _gap(x[None, :], (cols < K)[None, :], bad[:, None], top[:, None], c[:, None])
        out = _finish(
            x[None, :],
            keep[None, :],
            y,
            tau[:, None],
            bad[:, None],
            nan_row[:, None],
            share[:, None],
            HAS_MASK,
        ).to(out_ptr.dtype.element_ty)
        tl.store(out_row + cols[None, :], out, mask=ok)
        acc_support += ((out > 0) & ok).to(tl.int64)
    tl.store(support_ptr + rows, tl.sum(acc_support, axis=1), mask=row_ok)
    tau_out = tl.where(bad, special_tau, tau + top * c)
    tl.store(tau_ptr + rows, tau_out.to(tau_ptr.dtype.element_ty), mask=row_ok)


# ----- backward --------------------------------------------------------------------------


@triton.jit
def _vjp_short_kernel(
    p_ptr,
    stride_pr,
    stride_pk,
    g_ptr,
    stride_gr,
    stride_gk,
    scale_ptr,
    stride_s,
    res_ptr,
    R,
    K,
    CT: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``c · s ⊙ (g − mean_S g)`` for ``BLOCK_M`` rows held on chip; reference:
    :func:`sparsegen._projection.vjp_torch`."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < R
    ok = row_ok[:, None] & (cols < K)[None, :]
    p = tl.load(p_ptr + rows[:, None] * stride_pr + cols[None, :] * stride_pk, mask=ok, other=0.0)
    g = tl.load(g_ptr + rows[:, None] * stride_gr + cols[None, :] * stride_gk, mask=ok, other=0.0)
    g = g.to(CT)
    inside = (p > 0) & ok
    count = tl.maximum(tl.sum(inside.to(tl.int32), axis=1), 1)
    mean = tl.sum(tl.where(inside, g, 0.0), axis=1) / count.to(CT)
    result = tl.where(inside, g - mean[:, None], 0.0)
    if HAS_SCALE:
        c = tl.load(scale_ptr + rows * stride_s, mask=row_ok, other=1.0).to(CT)
        result = result * c[:, None]
    tl.store(
        res_ptr + rows[:, None] * K + cols[None, :], result.to(res_ptr.dtype.element_ty), mask=ok
    )


@triton.jit
def _vjp_long_kernel(
    p_ptr,
    stride_pr,
    stride_pk,
    g_ptr,
    stride_gr,
    stride_gk,
    scale_ptr,
    stride_s,
    res_ptr,
    R,
    K,
    CT: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """The VJP of one row of any length per program: a pass for the support's mean of
    ``g``, a pass to write; reference: :func:`sparsegen._projection.vjp_torch`."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, CHUNK)
    p_row = p_ptr + row * stride_pr
    g_row = g_ptr + row * stride_gr
    acc_count = tl.zeros([CHUNK], tl.int32)
    acc_total = tl.zeros([CHUNK], CT)
    for start in range(0, K, CHUNK):
        cols = start + offs
        ok = cols < K
        p = tl.load(p_row + cols * stride_pk, mask=ok, other=0.0)
        g = tl.load(g_row + cols * stride_gk, mask=ok, other=0.0).to(CT)
        inside = (p > 0) & ok
        acc_count += inside.to(tl.int32)
        acc_total += tl.where(inside, g, 0.0)
    count = tl.maximum(tl.sum(acc_count, axis=0), 1)
    mean = tl.sum(acc_total, axis=0) / count.to(CT)
    if HAS_SCALE:
        c = tl.load(scale_ptr + row * stride_s).to(CT)
    for start in range(0, K, CHUNK):
        cols = start + offs
        ok = cols < K
        p = tl.load(p_row + cols * stride_pk, mask=ok, other=0.0)
        g = tl.load(g_row + cols * stride_gk, mask=ok, other=0.0).to(CT)
        result = tl.where((p > 0) & ok, g - mean, 0.0)
        if HAS_SCALE:
            result = result * c
        tl.store(res_ptr + row * K + cols, result.to(res_ptr.dtype.element_ty), mask=ok)


# ----- launchers -------------------------------------------------------------------------


def _compute_type(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _short_blocks(rows: int, k: int, block_elements: int) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_K, num_warps)`` for rows of ``k`` held on chip."""
    block_k = triton.next_power_of_2(k)
    block_m = max(1, min(block_elements // block_k, triton.next_power_of_2(rows)))
    num_warps = min(16, max(4, block_m * block_k // 1024))
    return block_m, block_k, num_warps


def _per_row(t: torch.Tensor, batch: torch.Size, rows: int, device: torch.device) -> torch.Tensor:
    """A tensor broadcastable to ``(*batch, 1)`` as a 1-D view of one value per row on
    ``device`` (a copy only where its broadcast cannot be viewed so, or it lives
    elsewhere, e.g. a CPU scalar)."""
    return t.detach().to(device).expand(*batch, 1).reshape(rows)


def _empty_result(z, cone):
    """Mirrors ``sparsegen._ops._empty_result`` (a ``z`` with no elements)."""
    batch = z.shape[:-1]
    return (
        z.new_empty(z.shape),
        z.new_full(batch, math.nan),
        z.new_zeros(batch, dtype=torch.int64),
        None if cone is None else cone.of(z),
    )


def project_triton(
    z: torch.Tensor,
    scale: torch.Tensor | None,
    cone: ConeScale | None,
    info: bool = True,
    keep_scale: bool = True,
    mask: torch.Tensor | None = None,
    *,
    max_short_k: int = MAX_SHORT_K,
    chunk: int = LONG_CHUNK,
    block_elements: int = BLOCK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """:func:`sparsegen._projection.project_torch` by the Triton kernels: ``(output, tau,
    support, computed_scale)``, the contract of
    :func:`sparsegen._projection.project_compiled`.

    ``z``: float16/bfloat16/float32 (computed in float32) or float64 (in
    float64), any shape and strides, projected along its last dimension.
    ``scale``: None or a tensor broadcastable to ``(*batch, 1)`` (ignored when
    ``cone`` is given). ``cone``: a :class:`ConeScale` (q a float or a tensor
    broadcastable to ``(*batch, 1)``), its scale computed in the kernel from a
    float64 sum over the kept entries. ``mask``: boolean, broadcastable to
    ``z``, True = keep. ``info=False`` returns None for ``tau`` and ``support``,
    ``keep_scale=False`` None for the computed scale.

    ``max_short_k``, ``chunk`` and ``block_elements`` choose the path and the
    block sizes (rows of ``K > max_short_k`` are streamed in chunks of ``chunk``,
    a power of two); the defaults suit a GPU, tests lower them.
    """
    if z.numel() == 0:
        output, tau, support, computed = _empty_result(z, cone)
        return output, tau if info else None, support if info else None, computed
    k = z.shape[-1]
    batch = z.shape[:-1]
    z2 = z.detach().reshape(-1, k)
    rows = z2.shape[0]
    device = z.device

    keep = z2  # a placeholder pointer where there is no mask (never read)
    stride_m = (0, 0)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor; got {mask.dtype}")
        keep = mask.expand(z.shape).reshape(rows, k).view(torch.uint8)
        stride_m = keep.stride()

    cone_on = cone is not None
    scale_arg, stride_s = z2, 0
    if not cone_on and scale is not None:
        scale_arg = _per_row(scale, batch, rows, z.device)
        stride_s = scale_arg.stride(0)
    q_arg, stride_q = z2, 0
    if cone_on:
        if isinstance(cone.q, torch.Tensor):
            q_arg = _per_row(cone.q, batch, rows, device)
            stride_q = q_arg.stride(0)
        else:
            q_arg = torch.full((1,), float(cone.q), dtype=torch.float64, device=device)

    output = torch.empty(z.shape, dtype=z.dtype, device=device)
    tau = torch.empty(batch, dtype=z.dtype, device=device)
    support = torch.empty(batch, dtype=torch.int64, device=device)
    alpha = torch.empty((*batch, 1), dtype=z.dtype, device=device) if cone_on else tau

    args = (
        z2,
        *z2.stride(),
        keep,
        *stride_m,
        scale_arg,
        stride_s,
        q_arg,
        stride_q,
        output,
        tau,
        support,
        alpha,
        rows,
        k,
    )
    flags = dict(
        SCALE_MAX=float(torch.finfo(z.dtype).max),
        CT=_compute_type(z.dtype),
        F64=z.dtype == torch.float64,
        HAS_MASK=mask is not None,
        HAS_SCALE=not cone_on and scale is not None,
        CONE=cone_on,
        MIRROR=cone_on and bool(cone.mirror),
    )
    if k <= max_short_k:
        block_m, block_k, num_warps = _short_blocks(rows, k, block_elements)
        grid = (triton.cdiv(rows, block_m),)
        _project_short_kernel[grid](
            *args, **flags, BLOCK_M=block_m, BLOCK_K=block_k, num_warps=num_warps
        )
    else:
        _project_long_kernel[(rows,)](
            *args, **flags, CHUNK=chunk, num_warps=min(16, max(4, chunk // 512))
        )
    computed = alpha if cone_on and keep_scale else None
    if not info:
        return output, None, None, computed
    return output, tau, support, computed


def vjp_triton(
    output: torch.Tensor,
    support: torch.Tensor | None,
    grad: torch.Tensor,
    scale: torch.Tensor | None,
    *,
    max_short_k: int = MAX_SHORT_K,
    chunk: int = LONG_CHUNK,
    block_elements: int = BLOCK_ELEMENTS,
) -> torch.Tensor:
    """``Jᵀ g`` for ``z ↦ sparsemax(c z)``, ``c · s ⊙ (g − mean_{j∈S} g_j)`` with ``S =
    {output > 0}`` counted in the kernel (``support`` is not read): the Triton
    version of :func:`sparsegen._projection.vjp_torch`, whose dtype it returns
    (``grad``'s, promoted with ``scale``'s). Computed in float32 (float64 for a
    float64 result); ``scale`` None or broadcastable to ``(*batch, 1)``, not capped
    (as in ``vjp_torch``). Same paths and overrides as :func:`project_triton`."""
    dtype = grad.dtype if scale is None else torch.result_type(grad, scale)
    result = torch.empty(output.shape, dtype=dtype, device=output.device)
    if output.numel() == 0:
        return result
    k = output.shape[-1]
    batch = output.shape[:-1]
    p2 = output.detach().reshape(-1, k)
    g2 = grad.detach().expand(output.shape).reshape(-1, k)
    rows = p2.shape[0]
    scale_arg, stride_s = p2, 0
    if scale is not None:
        scale_arg = _per_row(scale, batch, rows, output.device)
        stride_s = scale_arg.stride(0)
    args = (p2, *p2.stride(), g2, *g2.stride(), scale_arg, stride_s, result, rows, k)
    flags = dict(CT=_compute_type(dtype), HAS_SCALE=scale is not None)
    if k <= max_short_k:
        block_m, block_k, num_warps = _short_blocks(rows, k, block_elements)
        grid = (triton.cdiv(rows, block_m),)
        _vjp_short_kernel[grid](
            *args, **flags, BLOCK_M=block_m, BLOCK_K=block_k, num_warps=num_warps
        )
    else:
        _vjp_long_kernel[(rows,)](
            *args, **flags, CHUNK=chunk, num_warps=min(16, max(4, chunk // 512))
        )
    return result
