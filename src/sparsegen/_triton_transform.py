r"""Triton kernels for the transforms that sparsegen-exp, sparsegen-sq and
sum-normalization++ apply before the projection (GPU; any device Triton runs on, its
interpreter included).

The reference, rule for rule, is the numba kernels of :mod:`sparsegen._transform_kernels`
(and, behind them, the torch formulas of :func:`sparsegen.functional.sparsegen_exp` and
:func:`~sparsegen.functional.sparsegen_sq`): per row, a reference value ``top`` over the
kept entries, then the transformed scores, in one read of the scores where torch takes
four to six passes:

* ``"exp_gap"``: ``top = max_j z_j`` (0 where not finite), ``e^{z − top} − 1``, masked
  entries ``−1`` (Laha et al. 2018, sparsegen-exp, shifted by its maximum);
* ``"square_gap"``: ``top = max_j |z_j|`` (1 where 0 or not finite),
  ``((|z| − top)/top)(|z|/top + 1) = (z/top)² − 1``, masked entries ``−1``;
* ``"ratio"``: ``z/u``, ``u`` the largest power of two at most the square's ``top``
  (exact), masked entries 0; ``u`` is the ``top`` it returns (the ratio's derivative is
  ``1/u``);
* for the first two, a finite score whose gap overflows (only under a top of +inf)
  gets −1, its limit.

Computed and written in float32 (float64 for float64 scores): half scores' gaps keep
float32's precision for the projection that reads them. Rows up
to ``MAX_SHORT_K`` are held on chip, a block of rows a program
(:func:`_transform_short_kernel`); longer ones are split into chunks across programs, a
kernel for each chunk's maximum (:func:`_transform_max_kernel`) and one that reduces its
row's maxima and writes its chunk (:func:`_transform_write_kernel`), so that a few long
rows still fill the device. Their derivatives, for a backward that nothing records, take
one kernel (:func:`_transform_backward_kernel`) where torch takes five or six passes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsegen._projection import TRANSFORMS  # by name; index = the kernels' KIND
from sparsegen._triton_math import (
    gap_key,
    gap_transform,
    power_of_two_at_most,
    transform_derivative,
    usable_top,
)
from sparsegen._triton_projection import (
    BLOCK_ELEMENTS,
    LONG_CHUNK,
    MAX_SHORT_K,
    _compute_type,
    _kept_entries,
    _load_chunk,
    _short_blocks,
    empty_rows,
    output_arg,
    row_start,
    rows_arg,
    scores_source,
    split_launch,
    split_program,
)
from sparsegen._validation import compute_dtype

__all__ = ["transform_backward_triton", "transform_triton"]


@triton.jit
def _transform_short_kernel(
    z_ptr, stride_zo, stride_zi, z_inner, stride_zk,
    keep_ptr, stride_mo, stride_mi, mask_inner, stride_mk,
    out_ptr, stride_oo, stride_oi, out_inner, stride_ok, top_ptr, R, K,
    KIND: tl.constexpr, CT: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """``BLOCK_M`` rows of ``K ≤ BLOCK_K`` entries held on chip: each row's ``top``, then
    its transformed scores."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K).to(tl.int64)  # (K · stride may pass 2³¹: a strided dim)
    ok = (rows[:, None] < R) & (cols[None, :] < K)
    z_rows = row_start(z_ptr, rows, stride_zo, stride_zi, z_inner)
    raw = tl.load(z_rows[:, None] + cols[None, :] * stride_zk, mask=ok)
    keep = _kept_entries(keep_ptr, rows, cols, stride_mo, stride_mi, mask_inner, stride_mk, ok,
                         HAS_MASK)  # fmt: skip
    top = usable_top(tl.max(gap_key(raw, keep, CT, KIND != 0), axis=1), KIND != 0)
    if KIND == 2:  # the ratio's divisor
        top = power_of_two_at_most(top)
    out = gap_transform(raw, keep, top[:, None], CT, KIND)
    out_rows = row_start(out_ptr, rows, stride_oo, stride_oi, out_inner)
    out = out.to(out_ptr.dtype.element_ty)
    tl.store(out_rows[:, None] + cols[None, :] * stride_ok, out, mask=ok)
    tl.store(top_ptr + rows, top.to(top_ptr.dtype.element_ty), mask=rows < R)


@triton.jit
def _transform_max_kernel(
    z_ptr, stride_zo, stride_zi, z_inner, stride_zk,
    keep_ptr, stride_mo, stride_mi, mask_inner, stride_mk,
    part_ptr, K, NC,
    CT: tl.constexpr, HAS_MASK: tl.constexpr, ABSOLUTE: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """Program ``(row, chunk)``: the chunk's maximum (of magnitudes with ``ABSOLUTE``)."""
    row, chunk = split_program(K, CHUNK)
    cols = chunk.to(tl.int64) * CHUNK + tl.arange(0, CHUNK)
    raw, keep, _ = _load_chunk(
        z_ptr, stride_zo, stride_zi, z_inner, stride_zk,
        keep_ptr, stride_mo, stride_mi, mask_inner, stride_mk,
        row, cols, K, CT, HAS_MASK,
    )  # fmt: skip
    tl.store(part_ptr + row * NC + chunk, tl.max(gap_key(raw, keep, CT, ABSOLUTE), axis=0))


@triton.jit
def _transform_write_kernel(
    z_ptr, stride_zo, stride_zi, z_inner, stride_zk,
    keep_ptr, stride_mo, stride_mi, mask_inner, stride_mk,
    part_ptr, out_ptr, stride_oo, stride_oi, out_inner, stride_ok, top_ptr,
    K, NC, KIND: tl.constexpr, CT: tl.constexpr, HAS_MASK: tl.constexpr,
    CHUNK: tl.constexpr, PART_BLOCK: tl.constexpr,
):  # fmt: skip
    """Program ``(row, chunk)``: the row's ``top`` from its chunks' maxima (chunk 0 writes
    it), then the chunk's transformed scores."""
    row, chunk = split_program(K, CHUNK)
    m = tl.full([PART_BLOCK], -float("inf"), CT)  # (magnitudes are never below 0, their least)
    for start in range(0, NC, PART_BLOCK):
        index = start + tl.arange(0, PART_BLOCK)
        m = tl.maximum(
            m, tl.load(part_ptr + row * NC + index, mask=index < NC, other=-float("inf"))
        )
    top = usable_top(tl.max(m, axis=0), KIND != 0)
    if KIND == 2:  # the ratio's divisor
        top = power_of_two_at_most(top)
    cols = chunk.to(tl.int64) * CHUNK + tl.arange(0, CHUNK)
    raw, keep, _ = _load_chunk(
        z_ptr, stride_zo, stride_zi, z_inner, stride_zk,
        keep_ptr, stride_mo, stride_mi, mask_inner, stride_mk,
        row, cols, K, CT, HAS_MASK,
    )  # fmt: skip
    out = gap_transform(raw, keep, top, CT, KIND).to(out_ptr.dtype.element_ty)
    out_row = row_start(out_ptr, row, stride_oo, stride_oi, out_inner)
    tl.store(out_row + cols * stride_ok, out, mask=cols < K)
    tl.store(top_ptr + row, top.to(top_ptr.dtype.element_ty), mask=chunk == 0)


def transform_triton(
    z: torch.Tensor,
    mask: torch.Tensor | None,
    kind: str,
    *,
    max_short_k: int = MAX_SHORT_K,
    chunk: int = LONG_CHUNK,
    block_elements: int = BLOCK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(transformed, top)`` of each slice of ``z`` (last dimension; any shape, strides and
    floating dtype), ``top`` one a slice with ``keepdim``, both in ``z``'s compute dtype
    (float32 for the half types): the contract of
    :func:`sparsegen._projection.transform_compiled`. ``mask``: boolean, broadcastable to
    ``z``, True = keep. ``max_short_k``, ``chunk`` (a power of two) and
    ``block_elements`` choose the path and blocks as :func:`~sparsegen._triton_projection.
    project_triton`'s do; tests lower them."""
    if kind not in TRANSFORMS:
        raise ValueError(f"transform_triton: kind must be one of {TRANSFORMS}; got {kind!r}")
    dtype = compute_dtype(z.dtype)
    out = empty_rows(z, dtype)
    top = torch.empty((*z.shape[:-1], 1), dtype=dtype, device=z.device)
    if z.numel() == 0:  # nothing to launch; an empty slice's top is the rules' fallback
        return out, top.fill_(0.0 if kind == "exp_gap" else 1.0)
    k = z.shape[-1]
    rows, source = scores_source(z, mask)
    written = output_arg(out, rows, k)
    flags = dict(CT=_compute_type(z.dtype), HAS_MASK=mask is not None)
    if k <= max_short_k:
        block_m, block_k, num_warps = _short_blocks(rows, k, block_elements, z.device)
        _transform_short_kernel[(triton.cdiv(rows, block_m),)](
            *source, *written, top, rows, k, KIND=TRANSFORMS.index(kind), **flags,
            BLOCK_M=block_m, BLOCK_K=block_k, num_warps=num_warps,
        )  # fmt: skip
        return out, top
    launch = split_launch(rows, k, chunk)
    part = torch.empty((rows, launch.chunks), dtype=compute_dtype(z.dtype), device=z.device)
    _transform_max_kernel[launch.grid](
        *source, part, k, launch.chunks, **flags, ABSOLUTE=kind != "exp_gap", CHUNK=chunk,
        num_warps=launch.num_warps,
    )  # fmt: skip
    _transform_write_kernel[launch.grid](
        *source, part, *written, top, k, launch.chunks, KIND=TRANSFORMS.index(kind), **flags,
        CHUNK=chunk, PART_BLOCK=launch.part_block, num_warps=launch.num_warps,
    )  # fmt: skip
    return out, top


@triton.jit
def _transform_backward_kernel(
    s_ptr, stride_so, stride_si, s_inner, stride_sk,
    keep_ptr, stride_mo, stride_mi, mask_inner, stride_mk,
    g_ptr, stride_go, stride_gi, g_inner, stride_gk,
    top_ptr, out_ptr, stride_oo, stride_oi, out_inner, stride_ok, R, K,
    KIND: tl.constexpr, CT: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """A tile of ``BLOCK_M`` rows by ``BLOCK_K`` columns: its ``∂L/∂z`` from the saved gaps
    (``"exp_gap"``) or scores (``"square_gap"``), :func:`transform_derivative`."""
    pid = tl.program_id(0)
    column_blocks = tl.cdiv(K, BLOCK_K)
    rows = (pid // column_blocks).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (pid % column_blocks).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    ok = (rows[:, None] < R) & (cols[None, :] < K)
    s_rows = row_start(s_ptr, rows, stride_so, stride_si, s_inner)
    saved = tl.load(s_rows[:, None] + cols[None, :] * stride_sk, mask=ok, other=0.0).to(CT)
    g_rows = row_start(g_ptr, rows, stride_go, stride_gi, g_inner)
    g = tl.load(g_rows[:, None] + cols[None, :] * stride_gk, mask=ok, other=0.0).to(CT)
    keep = _kept_entries(keep_ptr, rows, cols, stride_mo, stride_mi, mask_inner, stride_mk, ok,
                         HAS_MASK)  # fmt: skip
    top = tl.load(top_ptr + rows, mask=(rows < R) & (KIND != 0), other=1.0).to(CT)[:, None]
    grad = transform_derivative(saved, g, top, keep, KIND)
    out_rows = row_start(out_ptr, rows, stride_oo, stride_oi, out_inner)
    grad = grad.to(out_ptr.dtype.element_ty)
    tl.store(out_rows[:, None] + cols[None, :] * stride_ok, grad, mask=ok)


def transform_backward_triton(
    saved: torch.Tensor,
    mask: torch.Tensor | None,
    grad: torch.Tensor,
    top: torch.Tensor,
    kind: str,
    *,
    chunk: int = LONG_CHUNK,
    block_elements: int = BLOCK_ELEMENTS,
) -> torch.Tensor:
    """``∂L/∂z`` of :func:`transform_triton`'s ``"exp_gap"`` (``saved``: its gaps) or
    ``"square_gap"`` (``saved``: the scores, ``top`` one a slice), from ``grad`` of the
    transformed scores, in the compute dtype of ``saved`` and ``grad``: the contract of
    :func:`sparsegen._projection.transform_backward_compiled`, in one pass over any
    strides. Rows up to ``chunk`` entries are taken a block of rows a program, longer ones
    a chunk a program (tests lower both sizes)."""
    if kind not in ("exp_gap", "square_gap"):
        raise ValueError(f"transform_backward_triton: no derivative for kind {kind!r}")
    dtype = torch.promote_types(compute_dtype(saved.dtype), compute_dtype(grad.dtype))
    out = empty_rows(saved, dtype)
    if saved.numel() == 0:
        return out
    k = saved.shape[-1]
    mask = mask if kind == "square_gap" else None  # (a masked gap is −1: its slope is 0)
    rows, source = scores_source(saved, mask)
    per_row = top.detach().to(dtype).expand(*saved.shape[:-1], 1).reshape(rows)
    if k <= chunk:
        block_m, block_k, num_warps = _short_blocks(rows, k, block_elements, saved.device)
    else:
        block_m, block_k, num_warps = 1, chunk, split_launch(rows, k, chunk).num_warps
    grid = (triton.cdiv(rows, block_m) * triton.cdiv(k, block_k),)
    _transform_backward_kernel[grid](
        *source, *rows_arg(grad.detach().expand(saved.shape), rows, k), per_row,
        *output_arg(out, rows, k), rows, k, KIND=TRANSFORMS.index(kind),
        CT=_compute_type(dtype), HAS_MASK=mask is not None, BLOCK_M=block_m, BLOCK_K=block_k,
        num_warps=num_warps,
    )  # fmt: skip
    return out
