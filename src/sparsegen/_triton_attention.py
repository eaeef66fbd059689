r"""Fused sparse attention: Triton kernels that never build the ``(L, S)`` score matrix.

The reference is the unfused path of :func:`sparsegen.attention.scaled_dot_product_attention`:
``sparsemax(c_i · s_i) V`` per query ``i``, with scores ``s_ij = scale · q_i·k_j + bias_ij``
over the kept keys (the others are ``-inf``), and ``c_i`` the mapping's scale:
1 (sparsemax), ``1/(1 − λ)`` (sparsegen-lin, Laha et al. 2018, Eq. 5) or the cone's
``α_i = (1 + K_i q)/(Σ_j s_ij + K_i q)`` (sparsecone; sparsehourglass with ``|Σ_j s_ij|``,
Laha et al. 2018, §3.2), computed from the row's own sum.

Forward (:func:`_attention_forward_kernel`), one program per block of ``BLOCK_M`` queries,
streaming over blocks of ``BLOCK_N`` keys, each score tile computed by one ``tl.dot``
in every pass (the same expression, so every pass sees the same rounding):

1. statistics: each query's maximum ``m_i``, NaN/+inf/kept counts and (for the cone)
   sum; each tile's maximum goes to ``block_max`` (one float per tile, read back below
   to skip tiles);
2. the threshold, exactly: gaps ``y = c (s − m) ∈ [−∞, 0]``, and Michelot's fixed point
   (Newton on ``Σ_j [y_j − τ]_+ = 1``, Martins & Astudillo 2016, Algorithm 1, iterative
   form) from the lower bound ``τ = −1``: ``τ`` rises, the support shrinks, and the
   steps stop when no query's support shrinks (then every ``τ`` is exact; a step that
   would grow one, as rounding at a tie could, ends it too), a
   data-dependent ``while``, never a fixed count. Only the candidates ``y > −1`` can be
   in a support, so one pass gathers them, in key order, into ``CAP`` slots a query, and
   the steps run on chip over those; a query with more candidates than slots (scores
   all within ``1/c`` of the maximum) takes its steps streamed, a pass over the key
   tiles a step. Where the scale is given (sparsemax, sparsegen-lin), pass 1 gathers
   them itself, against the running maximum (which can only admit more: the steps from
   ``τ = −1`` pass over the rest), and this pass runs only for a block where a query
   overflowed its slots that way or has a +inf maximum;
3. the output ``Σ_j [y_ij − τ_i]_+ v_j``, with the support's mean value
   ``V̄_i = Σ_{j∈S_i} v_j / |S_i|`` and ``|S_i|`` beside it for the backward.

Passes 2 and 3 skip a tile when ``c_i (max tile − m_i) ≤ τ_i`` for each of its queries
(no entry of it is in a support: the gap is monotonic in the score; exp's and sq's, as
rounded, to within a margin the test leaves): trained attention is sparse, and most tiles
are skipped.

Backward, as FlashAttention-2's, from the saved ``(m, c, τ)``: the Jacobian of sparsemax is
``diag(s) − s sᵀ/|S|`` (``s`` the support's indicator), so with ``dP_ij = dO_i · v_j``
the scores' gradient is ``c_i [j ∈ S_i] (dP_ij − δ_i)``, ``δ_i = dO_i · V̄_i`` the
mean of ``dP`` over the support. The scale's gradient is per query:
``∂L/∂c_i = Σ_{j∈S_i} u_ij s_ij = (dO_i · O_i − δ_i)/c_i`` (``u`` the gradient of ``c s``;
the support's ``s_ij = (p_ij + τ_i)/c_i + m_i`` and ``Σ p = 1``). The cone's scale
depends on every kept score, which adds ``ε_i = ∂L/∂c_i · ∂c_i/∂s_ij`` to each kept
entry: dense, so no tile is skipped there. :func:`_attention_dkdv_kernel` (one program
per key block, over the query blocks of each query head sharing it) and
:func:`_attention_dq_kernel` (one program per query block) recompute the tiles; no
atomics, so the gradients are deterministic.

Special rows, as the projection's: a query whose kept scores hold a NaN, or whose scale
is NaN (the cone outside its domain), gives NaN and passes no gradient of its own (a NaN
query still reaches the key gradients through ``dS_ij q_i``); one that keeps no key (or
only -inf scores) gives zeros and no gradient; +inf scores share the mass equally.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from sparsegen._triton_math import (
    cone_alpha,
    expm1,
    michelot,
    michelot_step,
    square_gap,
    usable_top,
)

__all__ = ["AttentionStats", "attention_backward", "attention_forward", "block_sizes"]

MODES = {"given": 0, "cone": 1, "hourglass": 2, "exp": 3, "sq": 4}
# The transform of the scores before the projection: none, sparsegen-exp's, sparsegen-sq's.
TRANSFORMS = {"exp": 1, "sq": 2}
# Infinities and NaN are written inline, never as globals (see _triton_projection).
_FLOAT32_MAX = tl.constexpr(3.4028234663852886e38)
_MANY = tl.constexpr(2**31 - 1)  # more than any support
_GAP_ROUNDING = tl.constexpr(2.0**-19)  # 16 float32 ulps of 1: a transformed gap's error, ÷ c


class AttentionStats(NamedTuple):
    """What the forward keeps for the backward, one value per query (``(B, H, L)``) except
    ``vmean`` (``(B, H, L, Ev)``) and ``block_max`` (``(B·H, query blocks, key blocks)``)."""

    top: torch.Tensor  # m_i; +inf where the query keeps nothing, NaN for a NaN row
    scale: torch.Tensor  # c_i
    tau: torch.Tensor  # τ_i, in gap units
    support: torch.Tensor  # |S_i|, float32
    total: torch.Tensor  # Σ_j s_ij over the kept keys (the cone's sum), float64
    kept: torch.Tensor  # K_i, float32
    vmean: torch.Tensor  # V̄_i = Σ_{j∈S_i} v_j / |S_i|, in the inputs' dtype (as the output)
    block_max: torch.Tensor


# The dtypes of the per-query statistics, top to kept: the cone's sum is accumulated in
# float64, since it may pass float32's range.
STAT_DTYPES = (torch.float32,) * 4 + (torch.float64, torch.float32)


# ----- shared pieces -------------------------------------------------------------------


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    """``a @ b`` accumulated in float32. ``PRECISION="upcast"`` multiplies in float32 tiles
    of the same values: Triton's interpreter multiplies bfloat16 tiles as their integer
    storage."""
    if PRECISION == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _tile(ptr, offset, index, dims, stride_index, stride_dim, N, D):
    """Rows ``index`` of a ``(N, D)`` matrix at ``ptr + offset``, zero outside it (offsets in
    int64: a long sequence's rows times their stride can pass 2³¹)."""
    return tl.load(
        ptr
        + offset
        + index.to(tl.int64)[:, None] * stride_index
        + dims.to(tl.int64)[None, :] * stride_dim,
        mask=(index[:, None] < N) & (dims[None, :] < D),
        other=0.0,
    )


@triton.jit
def _scores(
    q, k, bias_ptr, keep_ptr, rows, cols, bias_off, keep_off,
    stride_bl, stride_bs, stride_ml, stride_ms, L, S, scale,
    HAS_BIAS: tl.constexpr, HAS_KEEP: tl.constexpr, CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr, TRANSFORM: tl.constexpr,
):  # fmt: skip
    """One ``(BLOCK_M, BLOCK_N)`` tile of scores ``scale · q kᵀ + bias`` with -inf where a key
    is not kept, and the tile's keep flags. A kept score that overflowed to -inf is an
    ordinary score under a transform (-inf means "not kept" to :func:`_gap`): sparsegen-sq
    squares it into the largest, +inf; sparsegen-exp's ``e^{-inf} = 0`` is ``e`` of the
    most negative float's."""
    s = _dot(q, tl.trans(k), PRECISION) * scale
    keep = (rows[:, None] < L) & (cols[None, :] < S)
    if CAUSAL:
        keep = keep & (cols[None, :] <= rows[:, None])
    if HAS_KEEP:
        flags = tl.load(
            keep_ptr
            + keep_off
            + rows.to(tl.int64)[:, None] * stride_ml
            + cols.to(tl.int64)[None, :] * stride_ms,
            mask=keep,
            other=0,
        )
        keep = keep & (flags != 0)
    if HAS_BIAS:
        s += tl.load(
            bias_ptr
            + bias_off
            + rows.to(tl.int64)[:, None] * stride_bl
            + cols.to(tl.int64)[None, :] * stride_bs,
            mask=keep,
            other=0.0,
        ).to(tl.float32)
    if TRANSFORM == 1:
        s = tl.where(s == -float("inf"), -_FLOAT32_MAX, s)
    elif TRANSFORM == 2:
        s = tl.where(s == -float("inf"), float("inf"), s)
    return tl.where(keep, s, -float("inf")), keep


@triton.jit
def _gap(s, top, c, TRANSFORM: tl.constexpr):
    """The gap below the row's top that the projection takes, the one rounding of each score
    that the Newton sums, the output and the backward share: ``c (s − m)``; with
    ``TRANSFORM=1`` sparsegen-exp's ``e^s/(1 − λ)`` shifted by its maximum, ``c (e^{s − m} −
    1)``, ``c = e^m/(1 − λ)``; with ``2`` sparsegen-sq's ``s²/(1 − λ)`` shifted,
    ``c ((|s| − M)/M)(|s|/M + 1)``, ``M = max |s|`` (the top), ``c = M²/(1 − λ)``. A score at
    the top is 0 (so a row whose top is +inf shares its mass among those scores)."""
    if TRANSFORM == 0:
        at_top = s == top
        gap = c * (s - top)
    elif TRANSFORM == 1:
        at_top = s == top
        gap = c * expm1(s - top)
    else:
        at_top = tl.abs(s) == top
        # (divided as the projection kernels and the CPU divide: float32's / is approximate,
        # and would move a key tied at τ to the other side of it than the unfused path)
        gap = c * square_gap(tl.abs(s), top, usable_top(top, True))
    gap = tl.where(at_top, 0.0, gap)
    # an excluded key stays excluded under a transform
    return tl.where(s == -float("inf"), -float("inf"), gap)


@triton.jit
def _kept_by_dropout(seed_ptr, row_index, cols, S, drop_p, DROPOUT: tl.constexpr):
    """Which entries dropout keeps (all without it): Philox numbers of ``(seed, query row,
    key)``, so that the backward draws the same ones. The seed is read from the device, not
    passed by value: a CUDA graph's replay draws it anew, where a value would be captured."""
    kept = (row_index[:, None] >= 0) & (cols[None, :] >= 0)  # the tile's shape either way
    if DROPOUT:
        kept = tl.rand(tl.load(seed_ptr), row_index[:, None] * S + cols[None, :]) >= drop_p
    return kept


@triton.jit
def _tile_matters(block_max_ptr, tile, top, c, tau, TRANSFORM: tl.constexpr):
    """Whether any query of the block may have a support entry in this tile (the gap is
    monotonic in the score, so the tile's maximum bounds every entry's). sparsegen-lin's
    gap ``c (s − m)`` is monotonic as rounded too; exp's and sq's, a few roundings deep,
    only to within a few ulps of ``c`` (their gaps' scale): a tile within that of τ is read."""
    gap = _gap(tl.load(block_max_ptr + tile), top, c, TRANSFORM)
    if TRANSFORM != 0:  # (not for a row that keeps nothing, top +inf: its gaps are exact)
        gap += tl.where(top < float("inf"), c * _GAP_ROUNDING, 0.0)
    return tl.max(tl.where(gap > tau, 1, 0), axis=0) > 0


@triton.jit
def _gather(slots, found, s, candidate, CAP: tl.constexpr):
    """Appends each row's ``candidate`` scores ``s`` (in key order) to its ``CAP`` slots
    after the ``found`` it holds; the new counts, which go on past ``CAP`` (then the row
    overflowed)."""
    slot = found[:, None] + tl.cumsum(candidate.to(tl.int32), axis=1) - 1
    tl.store(slots + slot, s, mask=candidate & (slot < CAP))
    return found + tl.sum(candidate.to(tl.int32), axis=1)


@triton.jit
def _query_block(L, H, GROUPS, BLOCK_M: tl.constexpr):
    """This program's block of queries: ``(query block, b·H + h, b, h, key head, rows)``."""
    query_blocks = tl.cdiv(L, BLOCK_M)
    qb = tl.program_id(0) % query_blocks
    bh = tl.program_id(0) // query_blocks
    h = bh % H
    return qb, bh, bh // H, h, h // GROUPS, qb * BLOCK_M + tl.arange(0, BLOCK_M)


@triton.jit
def _head_offsets(b, h, hk, stride_kb, stride_kh, stride_vb, stride_vh, stride_bb, stride_bh,
                  stride_mb, stride_mh):  # fmt: skip
    """The offsets of key head ``hk``'s keys and values, and of query head ``h``'s masks (in
    int64: a per-head mask's ``h · L · S`` can pass 2³¹)."""
    b, h, hk = b.to(tl.int64), h.to(tl.int64), hk.to(tl.int64)
    return (b * stride_kb + hk * stride_kh, b * stride_vb + hk * stride_vh,
            b * stride_bb + h * stride_bh, b * stride_mb + h * stride_mh)  # fmt: skip


@triton.jit
def _key_range(block_max_ptr, qb, bh, L, S, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr):  # fmt: skip
    """How many key blocks a query block sees (under ``CAUSAL`` query i sees keys j ≤ i)
    and where its tiles' maxima are."""
    end = S
    if CAUSAL:
        end = tl.minimum(S, (qb + 1) * BLOCK_M)
    tiles = block_max_ptr + (bh.to(tl.int64) * tl.cdiv(L, BLOCK_M) + qb) * tl.cdiv(S, BLOCK_N)
    return tl.cdiv(end, BLOCK_N), tiles


@triton.jit
def _saved_threshold(top_ptr, scale_ptr, tau_ptr, row_index, row_ok):
    """The forward's ``(m, c, τ)`` of a block of queries (rows past the end: nothing kept)."""
    top = tl.load(top_ptr + row_index, mask=row_ok, other=float("inf"))
    c = tl.load(scale_ptr + row_index, mask=row_ok, other=1.0)
    return top, c, tl.load(tau_ptr + row_index, mask=row_ok, other=0.0)


@triton.jit
def _saved_gradient_terms(delta_ptr, support_ptr, eps_ptr, row_index, row_ok):
    """Each query's ``δ``, whether its support holds more than one key, and the cone's ``ε``."""
    delta = tl.load(delta_ptr + row_index, mask=row_ok, other=0.0)
    shared = tl.load(support_ptr + row_index, mask=row_ok, other=0.0) > 1
    return delta, shared, tl.load(eps_ptr + row_index, mask=row_ok, other=0.0)


@triton.jit
def _row_scale(param_ptr, rows, row_ok, stride_pb, stride_ph, stride_pl, b, h, total, kept,
               top, MODE: tl.constexpr, HAS_PARAM: tl.constexpr):  # fmt: skip
    """Each query's scale: the given one (1 without a parameter; for sparsegen-exp times
    ``e^m``, for sparsegen-sq times ``M²``), or the cone's ``(1 + Kq)/(Σs + Kq)`` (``|Σs|``
    for the hourglass; NaN where the cone's denominator is ≤ 0), capped at float32's
    largest value; 1 for a query that keeps nothing."""
    param = tl.zeros_like(rows).to(tl.float32) + 1.0
    if HAS_PARAM:
        offset = (b.to(tl.int64) * stride_pb + h.to(tl.int64) * stride_ph
                  + rows.to(tl.int64) * stride_pl)  # fmt: skip
        param = tl.load(param_ptr + offset, mask=row_ok, other=1.0).to(tl.float32)
    if MODE == 0:
        c = param
    elif MODE == 3:
        # (a top of -inf, or of the most negative float standing for an overflowed -inf
        # score: e^top is 0, and the row, whose gaps are then all 0, is uniform)
        c = param * tl.exp(tl.where(top <= -_FLOAT32_MAX, 0.0, top))
    elif MODE == 4:
        unit = usable_top(top, True)
        c = param * unit * unit
    else:  # in float64, as the projection's: Kq and a row's sum may pass float32's range
        c = cone_alpha(total, 1.0, kept, param.to(tl.float64), MODE == 2).to(tl.float32)
    c = tl.where(kept == 0, 1.0, c)
    return tl.where(c > _FLOAT32_MAX, _FLOAT32_MAX, c)


# ----- forward -------------------------------------------------------------------------


@triton.jit
def _attention_forward_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, keep_ptr, param_ptr,
    out_ptr, vmean_ptr, top_ptr, scale_ptr, tau_ptr, support_ptr, total_ptr, kept_ptr,
    block_max_ptr, cand_ptr,
    stride_qb, stride_qh, stride_ql, stride_qe,
    stride_kb, stride_kh, stride_ks, stride_ke,
    stride_vb, stride_vh, stride_vs, stride_ve,
    stride_bb, stride_bh, stride_bl, stride_bs,
    stride_mb, stride_mh, stride_ml, stride_ms,
    stride_pb, stride_ph, stride_pl,
    H, GROUPS, L, S, E, EV, scale, seed_ptr, drop_p,
    MODE: tl.constexpr, HAS_PARAM: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_KEEP: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    TRANSFORM: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAP: tl.constexpr,
):  # fmt: skip
    """One block of queries of one (batch, head): statistics, τ, output (module docstring)."""
    qb, bh, b, h, hk, rows = _query_block(L, H, GROUPS, BLOCK_M)
    row_ok = rows < L
    dims = tl.arange(0, BLOCK_D)
    dims_v = tl.arange(0, BLOCK_DV)
    q = _tile(q_ptr, b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh, rows, dims, stride_ql,
              stride_qe, L, E)  # fmt: skip
    kbh, vbh, bias_off, keep_off = _head_offsets(
        b, h, hk, stride_kb, stride_kh, stride_vb, stride_vh, stride_bb, stride_bh, stride_mb,
        stride_mh,
    )  # fmt: skip
    key_blocks, tiles = _key_range(block_max_ptr, qb, bh, L, S, CAUSAL, BLOCK_M, BLOCK_N)
    row_index = bh.to(tl.int64) * L + rows
    slots = cand_ptr + row_index[:, None] * CAP

    # 1. statistics (and, for a given scale, the candidates: see 2.)
    top = tl.full([BLOCK_M], -float("inf"), tl.float32)
    n_nan = tl.zeros([BLOCK_M], tl.int32)
    kept = tl.zeros([BLOCK_M], tl.int32)
    total = tl.zeros([BLOCK_M], tl.float64)  # the cone's sum (float64: it may pass float32's)
    found = tl.zeros([BLOCK_M], tl.int32)
    if MODE == 0:  # a given scale, known before the statistics (that of a query keeping keys)
        given = _row_scale(param_ptr, rows, row_ok, stride_pb, stride_ph, stride_pl, b, h,
                           total, kept.to(tl.float32) + 1.0, top, MODE, HAS_PARAM)  # fmt: skip
    for kb in range(0, key_blocks):
        cols = kb * BLOCK_N + tl.arange(0, BLOCK_N)
        s, keep = _scores(
            q, _tile(k_ptr, kbh, cols, dims, stride_ks, stride_ke, S, E), bias_ptr, keep_ptr,
            rows, cols, bias_off, keep_off, stride_bl, stride_bs, stride_ml, stride_ms, L, S,
            scale, HAS_BIAS, HAS_KEEP, CAUSAL, PRECISION, TRANSFORM,
        )  # fmt: skip
        number = tl.where(s == s, s, -float("inf"))
        if TRANSFORM == 2:  # sparsegen-sq's top is the largest |s| of the kept keys
            number = tl.where(keep & (s == s), tl.abs(s), -float("inf"))
        tile_top = tl.max(number, axis=1)
        top = tl.maximum(top, tile_top)
        tl.store(tiles + kb, tl.max(tile_top, axis=0))
        if MODE == 0:  # against the running top: a superset of the final candidates
            candidate = (_gap(s, top[:, None], given[:, None], TRANSFORM) > -1.0) & row_ok[:, None]
            found = _gather(slots, found, s, candidate, CAP)
        n_nan += tl.sum((s != s).to(tl.int32), axis=1)
        kept += tl.sum(keep.to(tl.int32), axis=1)
        if MODE == 1 or MODE == 2:
            total += tl.sum(tl.where(keep, s, 0.0).to(tl.float64), axis=1)
    tl.debug_barrier()  # the tile maxima, read back by every thread below

    c = _row_scale(param_ptr, rows, row_ok, stride_pb, stride_ph, stride_pl, b, h, total,
                   kept.to(tl.float32), top, MODE, HAS_PARAM)  # fmt: skip
    c = tl.where(top == float("inf"), 1.0, c)  # +inf scores share the mass whatever the scale
    nan_row = (n_nan > 0) | (c != c)
    empty = (top == -float("inf")) & ~nan_row
    c = tl.where(empty, 1.0, c)  # so that its gaps, recomputed from m = +inf, stay -inf
    live = row_ok & ~nan_row & ~empty
    top = tl.where(empty, float("inf"), tl.where(nan_row, float("nan"), top))

    # 2. τ. The candidates, gaps y > −1 (no other entry can be in a support: τ ≥ −1), are
    #    gathered in key order into CAP slots a row; Michelot's steps on them run on chip.
    #    A given scale (sparsemax, sparsegen-lin) gathered them in pass 1 already, against
    #    the running top (a gap is larger there, so no candidate is missed, and the steps
    #    from τ = −1 pass over the others); a block gathers them in a pass of its own
    #    where the scale comes from the statistics, or where a row overflowed its slots
    #    or has a +inf top (whose gaps the running top does not give).
    floor = tl.full([BLOCK_M], -1.0, tl.float32)
    again = True
    if MODE == 0:
        again = tl.max((live & ((found > CAP) | (top == float("inf")))).to(tl.int32), axis=0) > 0
    if again:
        found = tl.zeros([BLOCK_M], tl.int32)
        for kb in range(0, key_blocks):
            if _tile_matters(tiles, kb, top, c, floor, TRANSFORM):
                cols = kb * BLOCK_N + tl.arange(0, BLOCK_N)
                s, keep = _scores(
                    q, _tile(k_ptr, kbh, cols, dims, stride_ks, stride_ke, S, E), bias_ptr,
                    keep_ptr, rows, cols, bias_off, keep_off, stride_bl, stride_bs,
                    stride_ml, stride_ms, L, S, scale, HAS_BIAS, HAS_KEEP, CAUSAL, PRECISION,
                    TRANSFORM,
                )  # fmt: skip
                candidate = (_gap(s, top[:, None], c[:, None], TRANSFORM) > -1.0) & live[:, None]
                found = _gather(slots, found, s, candidate, CAP)
    tl.debug_barrier()  # the slots, read back by every thread
    on_chip = live & (found <= CAP)
    index = tl.arange(0, CAP)
    held = tl.load(
        slots + index[None, :], mask=index[None, :] < found[:, None], other=-float("inf")
    )
    held_gaps = _gap(held, top[:, None], c[:, None], TRANSFORM)
    tau, count = michelot(held_gaps, floor, on_chip, tl.float32)

    # Rows with more candidates than slots: Michelot's steps streamed, a pass a step
    streamed = live & ~on_chip
    tau = tl.where(streamed, -1.0, tau)
    count = tl.where(streamed, _MANY, count)
    moving = tl.max(streamed.to(tl.int32), axis=0) > 0
    while moving:
        above = tl.zeros([BLOCK_M], tl.float64)
        n_above = tl.zeros([BLOCK_M], tl.int32)
        for kb in range(0, key_blocks):
            if _tile_matters(tiles, kb, top, c, tl.where(streamed, tau, float("inf")), TRANSFORM):
                cols = kb * BLOCK_N + tl.arange(0, BLOCK_N)
                s, keep = _scores(
                    q, _tile(k_ptr, kbh, cols, dims, stride_ks, stride_ke, S, E), bias_ptr,
                    keep_ptr, rows, cols, bias_off, keep_off, stride_bl, stride_bs, stride_ml,
                    stride_ms, L, S, scale, HAS_BIAS, HAS_KEEP, CAUSAL, PRECISION, TRANSFORM,
                )  # fmt: skip
                y = _gap(s, top[:, None], c[:, None], TRANSFORM)
                chosen = y > tau[:, None]
                above += tl.sum(tl.where(chosen, y.to(tl.float64), 0.0), axis=1)
                n_above += tl.sum(chosen.to(tl.int32), axis=1)
        tau, count, moved = michelot_step(tau, count, above, n_above, streamed, tl.float32)
        moving = tl.max(moved.to(tl.int32), axis=0) > 0

    # 3. the output, V̄ and |S| (dropout scales the first two after the loop)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    vsum = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    support = tl.zeros([BLOCK_M], tl.int32)
    for kb in range(0, key_blocks):
        if _tile_matters(tiles, kb, top, c, tau, TRANSFORM):
            cols = kb * BLOCK_N + tl.arange(0, BLOCK_N)
            s, keep = _scores(
                q, _tile(k_ptr, kbh, cols, dims, stride_ks, stride_ke, S, E), bias_ptr, keep_ptr,
                rows, cols, bias_off, keep_off, stride_bl, stride_bs, stride_ml, stride_ms, L, S,
                scale, HAS_BIAS, HAS_KEEP, CAUSAL, PRECISION, TRANSFORM,
            )  # fmt: skip
            y = _gap(s, top[:, None], c[:, None], TRANSFORM)
            chosen = y > tau[:, None]
            v = _tile(v_ptr, vbh, cols, dims_v, stride_vs, stride_ve, S, EV)
            dropped = chosen & _kept_by_dropout(seed_ptr, row_index, cols, S, drop_p, DROPOUT)
            p = tl.where(dropped, y - tau[:, None], 0.0)
            acc += _dot(p.to(v.dtype), v, PRECISION)
            ones = tl.where(dropped, 1.0, 0.0).to(v.dtype)  # (a bool cast is not interpretable)
            vsum += _dot(ones, v, PRECISION)
            support += tl.sum(chosen.to(tl.int32), axis=1)
    if DROPOUT:
        acc = acc / (1.0 - drop_p)
        vsum = vsum / (1.0 - drop_p)
    acc = tl.where(nan_row[:, None], float("nan"), acc)
    # the mean, not the sum, is stored: bounded by |v| as the output is, it fits the inputs'
    # dtype (float16's sum overflows past 65,504, thousands of keys of modest values)
    vmean = vsum / tl.maximum(support, 1).to(tl.float32)[:, None]

    out_offset = row_index[:, None] * EV + dims_v[None, :]
    out_ok = row_ok[:, None] & (dims_v[None, :] < EV)
    tl.store(out_ptr + out_offset, acc.to(out_ptr.dtype.element_ty), mask=out_ok)
    tl.store(vmean_ptr + out_offset, vmean.to(vmean_ptr.dtype.element_ty), mask=out_ok)
    tl.store(top_ptr + row_index, top, mask=row_ok)
    tl.store(scale_ptr + row_index, c, mask=row_ok)
    tl.store(tau_ptr + row_index, tau, mask=row_ok)
    tl.store(support_ptr + row_index, support.to(tl.float32), mask=row_ok)
    tl.store(total_ptr + row_index, total, mask=row_ok)
    tl.store(kept_ptr + row_index, kept.to(tl.float32), mask=row_ok)


# ----- backward ------------------------------------------------------------------------


@triton.jit
def _score_gradient(s, keep, do, v, top, c, tau, delta, shared, eps, kept, drop_p,
                    DENSE: tl.constexpr, DROPOUT: tl.constexpr, TRANSFORM: tl.constexpr,
                    PRECISION: tl.constexpr):  # fmt: skip
    """A tile's weights ``p`` (after dropout) and the gradient of its scores,
    ``y' [j∈S] (dP_ij − δ) (+ ε on every kept entry for the cone)``, ``dP_ij = dO·v_j``
    (times dropout's ``D_ij/(1 − p)``), ``y'`` the gap's derivative: ``c``, or
    ``c e^{s − m} = c + y`` for sparsegen-exp, ``2 c s / M²`` for sparsegen-sq. A query
    whose support is one key (``shared`` false) gets exactly 0: its ``dP − δ`` is 0, but
    ``δ`` comes from ``V̄``, not from this tile's product, and their rounding apart, times
    a large scale, would not be."""
    y = _gap(s, top[:, None], c[:, None], TRANSFORM)
    chosen = y > tau[:, None]
    p = tl.where(chosen, y - tau[:, None], 0.0)
    dp = _dot(do, tl.trans(v), PRECISION)
    if DROPOUT:
        p = tl.where(kept, p / (1.0 - drop_p), 0.0)
        dp = tl.where(kept, dp / (1.0 - drop_p), 0.0)
    slope = c[:, None]
    if TRANSFORM == 1:
        slope = slope + y
    elif TRANSFORM == 2:
        unit = usable_top(top, True)
        slope = 2.0 * slope * s / (unit * unit)[:, None]
    ds = tl.where(chosen & shared[:, None], slope * (dp - delta[:, None]), 0.0)
    if DENSE:
        ds += tl.where(keep, eps[:, None], 0.0)
    return p, ds


@triton.jit
def _attention_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, keep_ptr, do_ptr,
    top_ptr, scale_ptr, tau_ptr, support_ptr, delta_ptr, eps_ptr, block_max_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qh, stride_ql, stride_qe,
    stride_kb, stride_kh, stride_ks, stride_ke,
    stride_vb, stride_vh, stride_vs, stride_ve,
    stride_bb, stride_bh, stride_bl, stride_bs,
    stride_mb, stride_mh, stride_ml, stride_ms,
    HK, GROUPS, L, S, E, EV, scale, seed_ptr, drop_p,
    HAS_BIAS: tl.constexpr, HAS_KEEP: tl.constexpr, CAUSAL: tl.constexpr,
    DENSE: tl.constexpr, DROPOUT: tl.constexpr, TRANSFORM: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    """One block of keys of one (batch, key head): ``dK`` and ``dV`` summed over every query
    block of every query head sharing it."""
    key_blocks = tl.cdiv(S, BLOCK_N)
    query_blocks = tl.cdiv(L, BLOCK_M)
    pid = tl.program_id(0)
    kb = pid % key_blocks
    bhk = pid // key_blocks
    b = bhk // HK
    hk = bhk % HK
    cols = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    dims_v = tl.arange(0, BLOCK_DV)
    kbh, vbh, _, _ = _head_offsets(
        b, hk, hk, stride_kb, stride_kh, stride_vb, stride_vh, 0, 0, 0, 0  # (no mask: h unread)
    )  # fmt: skip
    v = _tile(v_ptr, vbh, cols, dims_v, stride_vs, stride_ve, S, EV)
    k = _tile(k_ptr, kbh, cols, dims, stride_ks, stride_ke, S, E)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    first = 0
    if CAUSAL:  # key j is seen by queries i >= j
        first = (kb * BLOCK_N) // BLOCK_M
    for g in range(0, GROUPS):
        h = hk * GROUPS + g
        bh = b * (HK * GROUPS) + h
        _, _, bias_off, keep_off = _head_offsets(
            b, h, hk, 0, 0, 0, 0, stride_bb, stride_bh, stride_mb, stride_mh
        )  # fmt: skip
        for qb in range(first, query_blocks):
            rows = qb * BLOCK_M + tl.arange(0, BLOCK_M)
            row_ok = rows < L
            row_index = bh.to(tl.int64) * L + rows
            top, c, tau = _saved_threshold(top_ptr, scale_ptr, tau_ptr, row_index, row_ok)
            tile = (bh.to(tl.int64) * query_blocks + qb) * key_blocks + kb
            if DENSE or _tile_matters(block_max_ptr, tile, top, c, tau, TRANSFORM):
                q_off = b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
                q = _tile(q_ptr, q_off, rows, dims, stride_ql, stride_qe, L, E)
                do = _tile(do_ptr, bh.to(tl.int64) * L * EV, rows, dims_v, EV, 1, L, EV)
                delta, shared, eps = _saved_gradient_terms(
                    delta_ptr, support_ptr, eps_ptr, row_index, row_ok
                )
                s, keep = _scores(
                    q, k, bias_ptr, keep_ptr, rows, cols, bias_off, keep_off, stride_bl,
                    stride_bs, stride_ml, stride_ms, L, S, scale, HAS_BIAS, HAS_KEEP, CAUSAL,
                    PRECISION, TRANSFORM,
                )  # fmt: skip
                kept = _kept_by_dropout(seed_ptr, row_index, cols, S, drop_p, DROPOUT)
                p, ds = _score_gradient(s, keep, do, v, top, c, tau, delta, shared, eps, kept,
                                        drop_p, DENSE, DROPOUT, TRANSFORM, PRECISION)  # fmt: skip
                dv += _dot(tl.trans(p.to(do.dtype)), do, PRECISION)
                dk += _dot(tl.trans(ds.to(q.dtype)), q, PRECISION)
    out_ok = cols[:, None] < S
    key_index = bhk.to(tl.int64) * S + cols
    tl.store(dk_ptr + key_index[:, None] * E + dims[None, :], (dk * scale).to(
        dk_ptr.dtype.element_ty), mask=out_ok & (dims[None, :] < E))  # fmt: skip
    tl.store(dv_ptr + key_index[:, None] * EV + dims_v[None, :], dv.to(
        dv_ptr.dtype.element_ty), mask=out_ok & (dims_v[None, :] < EV))  # fmt: skip


@triton.jit
def _attention_dq_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, keep_ptr, do_ptr,
    top_ptr, scale_ptr, tau_ptr, support_ptr, delta_ptr, eps_ptr, block_max_ptr, dq_ptr,
    stride_qb, stride_qh, stride_ql, stride_qe,
    stride_kb, stride_kh, stride_ks, stride_ke,
    stride_vb, stride_vh, stride_vs, stride_ve,
    stride_bb, stride_bh, stride_bl, stride_bs,
    stride_mb, stride_mh, stride_ml, stride_ms,
    H, GROUPS, L, S, E, EV, scale, seed_ptr, drop_p,
    HAS_BIAS: tl.constexpr, HAS_KEEP: tl.constexpr, CAUSAL: tl.constexpr,
    DENSE: tl.constexpr, DROPOUT: tl.constexpr, TRANSFORM: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    """One block of queries of one (batch, head): ``dQ`` over its key blocks."""
    qb, bh, b, h, hk, rows = _query_block(L, H, GROUPS, BLOCK_M)
    row_ok = rows < L
    row_index = bh.to(tl.int64) * L + rows
    dims = tl.arange(0, BLOCK_D)
    dims_v = tl.arange(0, BLOCK_DV)
    q = _tile(q_ptr, b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh, rows, dims, stride_ql,
              stride_qe, L, E)  # fmt: skip
    do = _tile(do_ptr, bh.to(tl.int64) * L * EV, rows, dims_v, EV, 1, L, EV)
    top, c, tau = _saved_threshold(top_ptr, scale_ptr, tau_ptr, row_index, row_ok)
    delta, shared, eps = _saved_gradient_terms(delta_ptr, support_ptr, eps_ptr, row_index, row_ok)
    kbh, vbh, bias_off, keep_off = _head_offsets(
        b, h, hk, stride_kb, stride_kh, stride_vb, stride_vh, stride_bb, stride_bh, stride_mb,
        stride_mh,
    )  # fmt: skip
    key_blocks, tiles = _key_range(block_max_ptr, qb, bh, L, S, CAUSAL, BLOCK_M, BLOCK_N)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for kb in range(0, key_blocks):
        if DENSE or _tile_matters(tiles, kb, top, c, tau, TRANSFORM):
            cols = kb * BLOCK_N + tl.arange(0, BLOCK_N)
            v = _tile(v_ptr, vbh, cols, dims_v, stride_vs, stride_ve, S, EV)
            k = _tile(k_ptr, kbh, cols, dims, stride_ks, stride_ke, S, E)
            s, keep = _scores(
                q, k, bias_ptr, keep_ptr, rows, cols, bias_off, keep_off, stride_bl, stride_bs,
                stride_ml, stride_ms, L, S, scale, HAS_BIAS, HAS_KEEP, CAUSAL, PRECISION,
                TRANSFORM,
            )  # fmt: skip
            kept = _kept_by_dropout(seed_ptr, row_index, cols, S, drop_p, DROPOUT)
            _, ds = _score_gradient(s, keep, do, v, top, c, tau, delta, shared, eps, kept,
                                    drop_p, DENSE, DROPOUT, TRANSFORM, PRECISION)  # fmt: skip
            dq += _dot(ds.to(k.dtype), k, PRECISION)
    tl.store(dq_ptr + row_index[:, None] * E + dims[None, :], (dq * scale).to(
        dq_ptr.dtype.element_ty), mask=row_ok[:, None] & (dims[None, :] < E))  # fmt: skip


# ----- launch --------------------------------------------------------------------------


def block_sizes(
    device: torch.device, dtype: torch.dtype, head_dim: int
) -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps, num_stages)``, 16 × 16 in the interpreter so that small
    tests cross several blocks. On a GPU, the largest tiles whose kernels compile for sm_90
    without spilling registers (or nearly, ``tests/library/triton_compile.py`` reports
    them): 64 × 64 for half types up to head dim 128, 32 × 32 past it; float32's products
    take more registers, 32 × 32 up to head dim 128 and 16 × 16 past it. Every kernel takes
    8 warps: at 4 the forward spills. The 64 × 64 half tiles multiply on Hopper's warp-group
    tensor cores (wgmma); the 32 × 32 ones past head dim 128 on the warp-level ones (mma).
    Chosen by the compiler's reports (``benchmarks/tune_gpu.py`` times the alternatives on
    a GPU)."""
    if device.type != "cuda":
        return 16, 16, 1, 1
    wide = head_dim > 128
    if dtype == torch.float32:
        return (16, 16, 8, 1) if wide else (32, 32, 8, 1)
    return (32, 32, 8, 1) if wide else (64, 64, 8, 2)


def block_max_shape(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int]:
    """``(B·H, query blocks, key blocks)``: one maximum a tile (at least one key block)."""
    batch, heads, length, dim = q.shape
    block_m, block_n, *_ = block_sizes(q.device, q.dtype, max(dim, v.shape[-1]))
    return batch * heads, triton.cdiv(length, block_m), max(1, triton.cdiv(k.shape[2], block_n))


def candidate_slots(device: torch.device) -> int:
    """Candidate slots a query (fp32): 64 on a GPU, enough for random N(0, 1) scores' ~23–40
    candidates at S = 4k–32k on average; 16 in the interpreter, so that small tests take the
    streamed path too."""
    return 64 if device.type == "cuda" else 16


def _strides4(t: torch.Tensor | None) -> tuple[int, int, int, int]:
    return (0, 0, 0, 0) if t is None else tuple(t.stride())


def precision(device: torch.device, dtype: torch.dtype) -> str:
    """float32 tiles are multiplied in full float32, or in TF32 where torch's own matrix
    products are allowed it (``torch.backends.cuda.matmul.allow_tf32``, off by default);
    half types use their tensor-core products (bfloat16 ones by way of float32 in the
    interpreter, see :func:`_dot`)."""
    on_gpu = device.type == "cuda"
    if dtype == torch.float32:
        return "tf32" if on_gpu and torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return "upcast" if dtype == torch.bfloat16 and not on_gpu else "tf32"


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor | None,
    bias: torch.Tensor | None,
    param: torch.Tensor | None,
    mode: str,
    causal: bool,
    scale: float,
    dropout: tuple[torch.Tensor | None, float] = (None, 0.0),
) -> tuple[torch.Tensor, AttentionStats]:
    """The fused forward: ``(output, stats)``.

    ``q`` ``(B, H, L, E)``, ``k`` ``(B, Hkv, S, E)``, ``v`` ``(B, Hkv, S, Ev)`` (any strides),
    ``H`` a multiple of ``Hkv``; ``keep`` (bool) and ``bias`` (float) ``(B, H, L, S)``
    views (broadcast strides welcome); ``param`` a ``(B, H, L)`` view of the scale
    (``mode="given"``; ``"exp"`` and ``"sq"``: ``1/(1 − λ)``, which the kernel multiplies by
    ``e^m`` or ``M²``) or of q (``"cone"``, ``"hourglass"``), or None (scale 1);
    ``dropout`` ``(seed, p)``, applied to the weights where ``p > 0``, ``seed`` an int64
    tensor of one element on the inputs' device.
    """
    batch, heads, length, dim = q.shape
    kv_heads, source, dim_v = k.shape[1], k.shape[2], v.shape[3]
    block_m, block_n, warps, stages = block_sizes(q.device, q.dtype, max(dim, dim_v))
    dropout = _seeded(dropout, q)
    rows = batch * heads * length
    output = q.new_empty(batch, heads, length, dim_v)
    per_row = [torch.empty(rows, dtype=dtype, device=q.device) for dtype in STAT_DTYPES]
    vmean = torch.empty_like(output)  # δ reads it as FlashAttention reads O: in the inputs' dtype
    # the tiles a causal mask hides entirely stay -inf (float32 whatever torch's default dtype)
    block_max = torch.full(
        block_max_shape(q, k, v), -math.inf, dtype=torch.float32, device=q.device
    )
    if rows == 0:
        return output, _stats(per_row, vmean, block_max, (batch, heads, length))
    keep_arg = keep.view(torch.uint8) if keep is not None else q
    capacity = candidate_slots(q.device)
    candidates = torch.empty(rows, capacity, dtype=torch.float32, device=q.device)
    grid = (block_max.shape[0] * block_max.shape[1],)  # a program a block of queries
    _attention_forward_kernel[grid](
        q, k, v, bias if bias is not None else q, keep_arg, param if param is not None else q,
        output, vmean, *per_row, block_max, candidates,
        *q.stride(), *k.stride(), *v.stride(), *_strides4(bias), *_strides4(keep),
        *(param.stride() if param is not None else (0, 0, 0)),
        heads, heads // kv_heads, length, source, dim, dim_v, scale, *dropout,
        MODE=MODES[mode], HAS_PARAM=param is not None, HAS_BIAS=bias is not None,
        HAS_KEEP=keep is not None, CAUSAL=causal, DROPOUT=dropout[1] > 0,
        TRANSFORM=TRANSFORMS.get(mode, 0), PRECISION=precision(q.device, q.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=_block_dim(dim), BLOCK_DV=_block_dim(dim_v),
        CAP=capacity, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return output, _stats(per_row, vmean, block_max, (batch, heads, length))


def _seeded(dropout: tuple[torch.Tensor | None, float], q: torch.Tensor) -> tuple:
    """The kernels' ``(seed_ptr, drop_p)``: without dropout, any tensor stands for the seed."""
    seed, p = dropout
    return (q, 0.0) if seed is None or p <= 0 else (seed, p)


def _block_dim(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))


def _stats(per_row, vmean, block_max, shape) -> AttentionStats:
    top, scale, tau, support, total, kept = (t.view(shape) for t in per_row)
    return AttentionStats(top, scale, tau, support, total, kept, vmean, block_max)


def attention_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor | None,
    bias: torch.Tensor | None,
    stats: AttentionStats,
    delta: torch.Tensor,
    eps: torch.Tensor | None,
    causal: bool,
    scale: float,
    dropout: tuple[torch.Tensor | None, float] = (None, 0.0),
    mode: str = "given",
    products: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` from the output's gradient, the forward's ``stats``, each query's
    ``δ`` (``(B, H, L)`` float32), for the cone ``ε`` (else None), and the forward's
    ``dropout``, ``mode`` and ``products`` (its :func:`precision`; None: as that says
    now)."""
    batch, heads, length, dim = q.shape
    kv_heads, source, dim_v = k.shape[1], k.shape[2], v.shape[3]
    dq = torch.zeros_like(q, memory_format=torch.contiguous_format)
    dk = torch.zeros_like(k, memory_format=torch.contiguous_format)
    dv = torch.zeros_like(v, memory_format=torch.contiguous_format)
    if 0 in (batch, heads, length, source):  # (no features, E = 0, still weigh the values)
        return dq, dk, dv
    block_m, block_n, warps, stages = block_sizes(q.device, q.dtype, max(dim, dim_v))
    dropout = _seeded(dropout, q)
    grad = grad.contiguous()
    common = (
        q, k, v, bias if bias is not None else q,
        keep.view(torch.uint8) if keep is not None else q, grad,
        stats.top, stats.scale, stats.tau, stats.support, delta,
        eps if eps is not None else delta,
        stats.block_max,
    )  # fmt: skip
    strides = (*q.stride(), *k.stride(), *v.stride(), *_strides4(bias), *_strides4(keep))
    flags = dict(
        HAS_BIAS=bias is not None, HAS_KEEP=keep is not None, CAUSAL=causal,
        DENSE=eps is not None, DROPOUT=dropout[1] > 0, TRANSFORM=TRANSFORMS.get(mode, 0),
        PRECISION=products or precision(q.device, q.dtype),
        BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_D=_block_dim(dim), BLOCK_DV=_block_dim(dim_v),
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    groups = heads // kv_heads
    shape = (length, source, dim, dim_v, scale, *dropout)
    grid_kv = (triton.cdiv(source, block_n) * batch * kv_heads,)
    _attention_dkdv_kernel[grid_kv](*common, dk, dv, *strides, kv_heads, groups, *shape, **flags)
    grid_q = (triton.cdiv(length, block_m) * batch * heads,)
    _attention_dq_kernel[grid_q](*common, dq, *strides, heads, groups, *shape, **flags)
    return dq, dk, dv
