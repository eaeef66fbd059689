r"""The one Euclidean projection onto the probability simplex that every mapping uses.

.. math::

    \operatorname{sparsemax}(c\,z) = \operatorname*{argmin}_{p \in \Delta} \lVert p - c\,z \rVert^2
    = [c\,z - \tau]_+, \qquad \textstyle\sum_j [c\,z_j - \tau]_+ = 1.

The per-slice scale ``c`` is fused into the projection because most of the
sparsegen family is a rescaled sparsemax (Laha et al. 2018, Eq. 2): sparsegen-lin uses
``c = 1/(1-λ)``, sparsecone and sparsehourglass a data-dependent ``α(z)``.

This module holds the implementations; :mod:`sparsegen._ops` puts them behind
torch's dispatcher as the operators ``sparsegen::project`` and
``sparsegen::project_backward``. Three exact algorithms compute the threshold
``τ``; all agree to rounding:

``"sort"``
    Martins & Astudillo's Algorithm 1, O(K log K), any device.
``"michelot"``
    Michelot's fixed point, which is Newton's method on ``Σ_j [y_j − τ]_+ = 1``
    started from the lower bound ``max(y) − 1``: each step is one vectorised
    O(K) pass, τ rises monotonically and the support shrinks until it stops
    changing, at the exact τ. A fixed number of passes, ``min(K + 1,
    MICHELOT_PASSES)``, with no data-dependent branch and so no host
    synchronisation on a GPU: K + 1 passes are always enough, and rows of
    ``K ≥ MICHELOT_PASSES`` still moving after the last pass take the
    ``"sort"`` threshold instead (a branch-free ``where``, so that finish costs
    a sort of every row: for such rows ``"auto"`` picks ``"sort"`` off the CPU).
``"compiled"``
    The same Newton iteration compiled with numba for CPU float32/float64
    (``sparsegen._kernels``): scores shifted by their maximum and summed in their own dtype,
    short rows solved several at a time, long rows first reduced to their few
    candidates in one pass, rows in parallel. Each step that is not the last
    shrinks the support, so at most K + 1 steps are taken.
``"triton"``
    The same Newton iteration as Triton kernels (``sparsegen._triton_projection``),
    for CUDA tensors, computed in float32 (float64 in float64): several short
    rows per program, a row of up to 16k entries on chip, longer rows split
    across programs (a candidate pass, a solve on the candidates, a write).
    On CPU tensors the same kernels run in Triton's interpreter when
    ``TRITON_INTERPRET=1`` (how they are tested without a GPU).
``"auto"``
    ``"compiled"`` for CPU float32/float64 tensors when numba is importable,
    ``"triton"`` for CUDA tensors when triton is importable,
    else ``"michelot"`` for rows shorter than ``MICHELOT_PASSES``, else ``"sort"``.

The torch implementations take no data-dependent branch at all, so they trace
(``torch.compile(fullgraph=True)``, ``torch.export``): ``torch.export``
captures them, as plain ATen ops, in place of the operators. Special values are handled
identically by every algorithm (see :func:`special_rows`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import re
from typing import NamedTuple

import numpy as np
import torch

from sparsegen import _fork  # noqa: F401  (its fork hook, registered when sparsegen is)
from sparsegen._validation import HALF_DTYPES, compute_dtype, on_device

ALGORITHMS = ("auto", "sort", "michelot", "compiled", "triton")
"""The values of the mappings' ``algorithm=``: ``"auto"`` picks ``"triton"`` on CUDA and
``"compiled"`` (the numba kernel) on CPU float32/float64 where numba is installed."""

# Michelot passes: exact for rows of K < MICHELOT_PASSES, longer rows still
# moving after them are finished by the sort threshold.
MICHELOT_PASSES = 16

SUM_UNIT = 2.0**64
"""The unit in which every back end sums again a float64 slice whose sum overflows: no
partial sum of up to 2^63 finite scores overflows in it, the divisions by a power of two
are exact (but for scores below 2^-958, whose digits fall into the subnormals: nothing
beside a sum that overflowed), and a moderate sum ``Σz`` (partial sums that overflowed
in one order) stays a moderate ``total``, so that the scale's gradient, ``∝ unit/(Σz +
Kq)²`` in that unit, does not overflow as it would in units of the largest ``|z|``."""


class ProjectionResult(NamedTuple):
    """A projection's output with its threshold and support size per slice.

    ``threshold`` is ``τ`` in the space of the (transformed, scaled) scores
    that were projected, and ``support_size`` counts the non-zero outputs.
    Both have the input's shape with ``dim`` removed and carry no gradient.
    Slices without a finite maximum follow :func:`special_rows`.
    """

    output: torch.Tensor
    threshold: torch.Tensor
    support_size: torch.Tensor


def cone_scale(
    total: torch.Tensor,
    k: int | torch.Tensor,
    q: float | torch.Tensor,
    mirror: bool,
    unit: float | torch.Tensor = 1.0,
    reciprocal: bool = False,
) -> torch.Tensor:
    r"""Sparsecone's ``α = (1 + Kq)/(Σz + Kq)`` (NaN where that denominator is ≤ 0) or,
    with ``mirror``, sparsehourglass's ``α̂ = (1 + Kq)/(|Σz| + Kq)``, from the sum
    ``Σz = unit · total``, in ``total``'s dtype. With ``reciprocal``, ``1/α`` formed as the
    quotient the other way up: its gradient stays finite where ``α²`` underflows (through
    ``α``, ``−∂α/α²`` is inf · 0).

    Where ``Kq > 1e300`` both parts are divided by ``Kq`` first, so that a huge
    ``q`` (``1 + Kq`` overflowing) gives the limit ``α → 1``, sparsemax, not
    inf/inf; below, one division, as the compiled kernel computes it. A sum
    that would overflow comes in units of ``unit`` (:func:`kept_sum`): both
    parts are then divided by it.
    """
    if not isinstance(k, torch.Tensor):  # filled on the device: as_tensor's copy would wait
        k = torch.full((), k, dtype=total.dtype, device=total.device)
    # in total's dtype (float64), a tensor q too, on every path: a 0-d K does not promote a
    # float32 q, and the kernels compute Kq in float64
    kq = k.to(total.dtype) * (q.to(total.dtype) if isinstance(q, torch.Tensor) else q)
    s = total.abs() if mirror else total
    big = kq > 1e300
    inverse = 1 / torch.where(big, kq, 1.0)  # 0 where Kq overflowed
    numerator = torch.where(big, 1 + inverse, (1 + kq) / unit)
    denominator = torch.where(big, s * (unit * inverse) + 1, s + kq / unit)
    ratio = denominator / numerator if reciprocal else numerator / denominator
    alpha = torch.where(torch.isinf(kq), 1.0, ratio)
    if mirror:  # ≥ Kq > 0 (an underflow to 0 gives inf: capped, the limit)
        return alpha
    return torch.where((denominator > 0) | torch.isinf(kq), alpha, math.nan)


def kept_sum(
    z: torch.Tensor, mask: torch.Tensor | None, dim: int = -1
) -> tuple[torch.Tensor, torch.Tensor | int, torch.Tensor | float]:
    """``(total, K, unit)``: each slice's sum over its kept entries is ``unit · total``,
    in float64 (``keepdim``), and ``K`` counts them.

    A float32 or half sum cannot overflow float64; a float64 slice whose sum does is
    summed again in units of :data:`SUM_UNIT`, as the kernels do, so that
    its scale is tiny rather than 0, and an infinite score decides the sum whatever
    order the partial sums overflowed in. CPU float32/float64 scores that nothing traces
    or transforms are summed by that kernel (:class:`_KeptSumFunction`).
    """
    if _sums_by_kernel(z, mask, dim):
        return _KeptSumFunction.apply(z, mask)
    return kept_sum_torch(z, mask, dim)


def kept_sum_torch(
    z: torch.Tensor, mask: torch.Tensor | None, dim: int = -1
) -> tuple[torch.Tensor, torch.Tensor | int, torch.Tensor | float]:
    """:func:`kept_sum` in torch ops (differentiable, traceable, on any device)."""
    values = z if mask is None else torch.where(mask, z, 0.0)
    k = z.shape[dim] if mask is None else mask.expand(z.shape).sum(dim, keepdim=True)
    if z.dtype != torch.float64 or z.shape[dim] == 0:
        return values.sum(dim, keepdim=True, dtype=torch.float64), k, 1.0
    total = values.sum(dim, keepdim=True)
    # (not finite: partial sums that overflow both ways make NaN rather than inf)
    unit = torch.where(torch.isfinite(total), 1.0, SUM_UNIT).to(total.dtype)
    return (values / unit).sum(dim, keepdim=True), k, unit


def _sums_by_kernel(z: torch.Tensor, mask: torch.Tensor | None, dim: int) -> bool:
    """Whether :func:`kept_sum` calls the numba kernel: contiguous CPU float32/float64
    slices along the last dimension, in plain eager mode."""
    # (the mode first: under a trace, dim may be a traced value, which a test would record)
    return (
        compilable(z)
        and not torch.compiler.is_compiling()
        and plain_eager(z, mask)
        and dim in (-1, z.ndim - 1)
        and z.numel() > 0
        and z.is_contiguous()
    )


class _KeptSumFunction(torch.autograd.Function):
    """:func:`kept_sum` by the numba kernel (:func:`kept_sums_compiled`), in one read where
    torch takes a float64 copy; the total's gradient, ``1/unit`` at each kept entry, a
    broadcast view where no mask selects it (torch's backward of the float64 sum writes a
    float32 copy)."""

    @staticmethod
    def forward(ctx, z, mask):
        total, k, unit = kept_sums_compiled(z, mask)
        ctx.mark_non_differentiable(k, unit)
        ctx.save_for_backward(mask, unit)
        ctx.shape, ctx.dtype = z.shape, z.dtype
        return total, k, unit

    @staticmethod
    def backward(ctx, grad_total, _k, _unit):
        mask, unit = ctx.saved_tensors
        grad = (grad_total / unit).to(ctx.dtype).expand(ctx.shape)
        return (grad if mask is None else torch.where(mask, grad, 0.0)), None


def slice_scale(
    z: torch.Tensor,
    q: float | torch.Tensor,
    mirror: bool,
    mask: torch.Tensor | None,
    dim: int = -1,
    reciprocal: bool = False,
) -> torch.Tensor:
    """:func:`cone_scale` of each slice of ``z`` along ``dim`` (``keepdim``; its
    ``reciprocal`` too), in ``z``'s compute dtype (float32 for the half types, where a large
    scale would overflow); 1 for a fully masked slice (its output is zeros whatever the
    scale)."""
    total, k, unit = kept_sum(z, mask, dim)
    # A finite 1/1 for a fully masked slice, and a NaN put back after the formula for a
    # slice holding a NaN, so that their gradients are 0, not 0 · NaN (the formula's slope)
    nan = torch.isnan(total)
    cut = nan if mask is None else nan | (k == 0)
    scale = cone_scale(torch.where(cut, 1.0, total), k, q, mirror, unit, reciprocal)
    scale = torch.where(nan, math.nan, scale).to(compute_dtype(z.dtype))
    return scale if mask is None else torch.where(k == 0, 1.0, scale)


class ConeScale(NamedTuple):
    r"""A scale the projection computes from the scores' sum: sparsecone's or sparsehourglass's.

    $$
    \alpha(z) = \frac{1 + Kq}{\sum_j z_j + Kq}, \qquad
    \hat\alpha(z) = \frac{1 + Kq}{\lvert\sum_j z_j\rvert + Kq} \quad (\text{mirror}),
    $$

    per slice of ``K`` entries, ``q > 0``; with a mask, the sum and ``K`` are
    over the kept entries. Sparsecone's α is NaN where its denominator is ≤ 0
    (outside its domain). Passed as ``scale``, it lets the compiled kernel
    compute the scale in the same call instead of in separate torch passes;
    the backward adds the scale's own gradient, ``∂α/∂z_i = −α²/(1 + Kq)``
    (times ``sign(Σ_j z_j)`` for α̂) on the kept entries.
    """

    q: float | torch.Tensor  # a tensor: one q per slice (keepdim), taking no gradient here
    mirror: bool  # sparsehourglass's |Σz|

    def of(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The scale of each slice of ``z`` (last dimension), with ``keepdim``."""
        return slice_scale(z, self.q, self.mirror, mask)

    def grad(
        self, z: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``∂α/∂z_i`` of the scale ``α`` of ``z``: ``α²`` times :meth:`slice_factor`, 0 at
        masked entries (and where the factor is 0, even where ``α²`` overflows)."""
        factor = self.slice_factor(z, mask, scale.dtype)
        if not isinstance(factor, torch.Tensor):  # −1/(1 + Kq): never 0 but at an inf Kq
            return factor * scale**2
        if mask is not None:
            factor = torch.where(mask, factor, 0.0)
        return torch.where(factor == 0, 0.0, factor * scale**2)

    def slice_factor(
        self, z: torch.Tensor, mask: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor | float:
        """:meth:`factor` of each slice of ``z`` (last dimension, ``keepdim``), with the sum's
        sign and ``K`` read off ``z`` by :func:`kept_sum`; a number where it needs neither
        (sparsecone without a mask and a number q)."""
        if not (self.mirror or mask is not None):
            return self.factor(None, z.shape[-1], dtype)
        total, k, _ = kept_sum(z, mask)
        return self.factor(total.sign() if self.mirror else None, k, dtype)

    def factor(
        self, sign: torch.Tensor | None, k: int | torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor | float:
        """``∂α/∂z_i ÷ α²``, the same for every kept i of a slice: ``∂α/∂z_i =
        −α/(Σz + Kq) = −α²/(1 + Kq)``, so ``−1/(1 + Kq)`` (−0 in the limit of a huge
        ``q``), times ``sign`` (of ``Σz``, per slice: ``|Σz|' = sign(Σz)``, 0 at
        ``Σz = 0`` as torch's abs) for α̂; ``k`` counts the kept entries. No score is
        needed: the backward keeps ``α`` and this factor, not the scores."""
        # (a mask's count is int64, which times a float is torch's default dtype: float32)
        k = _in_dtype(k, dtype)
        factor = -1 / (1 + k * self.q)
        if sign is not None:
            factor = factor * _in_dtype(sign, dtype)
        return factor


def _in_dtype(t: torch.Tensor | int, dtype: torch.dtype) -> torch.Tensor | int:
    """``t`` in ``dtype``: converted only where it differs (``to`` the same dtype returns
    ``t`` itself, which an operator's autograd setup may not hand on)."""
    return t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype != dtype else t


Scale = torch.Tensor | ConeScale | None

_numba_kernels = None


def numba_kernels():
    """The numba kernels (:mod:`sparsegen._kernels`), imported on first use: ``import
    sparsegen`` does not pay for numba."""
    global _numba_kernels
    if _numba_kernels is None:
        from sparsegen import _kernels as module

        _numba_kernels = module
    return _numba_kernels


def compilable(t: torch.Tensor) -> bool:
    """Whether the numba kernels take ``t``: a CPU float32/float64 tensor."""
    return t.is_cpu and t.dtype in (torch.float32, torch.float64)


TRITON_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# Looked up once, not imported (that takes a second); a constant, which torch.compile
# reads without tracing a cache.
_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def triton_installed() -> bool:
    """Whether triton can be imported."""
    return _TRITON_FOUND


def _release(version: str) -> tuple[int, int]:
    major, minor = (int(part) for part in re.findall(r"\d+", version)[:2])
    return major, minor


def _interpreter_trouble() -> str | None:
    """Why the installed triton's interpreter cannot run here, if it cannot: before 3.7 it
    turns 1-element arrays into loop bounds with ``int()``, which NumPy 2.4 refuses."""
    try:
        triton_version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:  # not installed, or without metadata
        return None
    if _release(triton_version) < (3, 7) and _release(np.__version__) >= (2, 4):
        return (
            f"Triton's interpreter in triton {triton_version} cannot run with NumPy "
            f"{np.__version__} (it converts 1-element arrays with int()): install triton>=3.7 "
            "or numpy<2.4 to run the Triton kernels on CPU tensors (TRITON_INTERPRET=1)"
        )
    return None


# Looked up only where the interpreter is asked for when sparsegen is imported: the
# metadata lookup would add to every import for a check no other run needs.
_INTERPRETER_TROUBLE = (
    _interpreter_trouble() if os.environ.get("TRITON_INTERPRET", "0") == "1" else None
)


def triton_interpreted() -> bool:
    """Whether Triton runs its kernels in its interpreter, on CPU tensors; a RuntimeError
    naming the fix where the installed triton's interpreter cannot run with this NumPy."""
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if interpreted and _INTERPRETER_TROUBLE is not None:
        raise RuntimeError(_INTERPRETER_TROUBLE)
    return interpreted


# The Triton kernels count a row's entries, chunks and support in 32 bits: a row longer
# than this (8 GiB of float32) takes the torch path.
TRITON_MAX_ROW = 2**31 - 2**16


def triton_row(t: torch.Tensor) -> bool:
    """Whether the rows along ``t``'s last dimension are short enough for the Triton kernels.
    A symbolic length (a dynamic shape under ``torch.export``/``torch.compile``) is taken to
    be: comparing it would add a guard on it, and a dynamic export would fail."""
    if t.ndim == 0 or not isinstance(t.shape[-1], int):
        return True
    return t.shape[-1] <= TRITON_MAX_ROW


def tritonable(t: torch.Tensor) -> bool:
    """Whether the Triton kernels take ``t``: a floating-point tensor on CUDA, or on the
    CPU under Triton's interpreter (checked before importing triton)."""
    on_device = t.is_cuda or (t.is_cpu and triton_interpreted())
    return on_device and t.dtype in TRITON_DTYPES and triton_installed()


def resolve_algorithm(algorithm: str, z: torch.Tensor) -> str:
    """The algorithm that runs for ``z``: ``"auto"`` made concrete, ``"compiled"`` checked."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}; got {algorithm!r}")
    if algorithm == "auto":
        if compilable(z):
            return "compiled"
        if z.is_cuda and tritonable(z) and triton_row(z):
            return "triton"
        if torch.compiler.is_exporting():  # (export traces the sort formulation whatever
            return "sort"  # the algorithm: a choice by K would guard a dynamic K)
        return "michelot" if z.shape[-1] < MICHELOT_PASSES else "sort"
    if algorithm == "triton" and not tritonable(z):
        raise ValueError(
            "algorithm='triton' runs on CUDA floating-point tensors (on CPU "
            "tensors with TRITON_INTERPRET=1) and needs triton (pip install 'sparsegen[triton]'); "
            f"got a {z.dtype} tensor on {z.device}"
            + ("" if triton_installed() else ", and triton is not installed")
            + ". Use 'auto', 'sort' or 'michelot'."
        )
    if algorithm == "triton" and not triton_row(z):
        raise ValueError(
            f"algorithm='triton' projects rows of at most {TRITON_MAX_ROW:,} entries (its "
            f"kernels count in 32 bits); got {z.shape[-1]:,}. Use 'auto' or 'sort'."
        )
    if algorithm == "compiled" and not compilable(z):
        raise ValueError(
            "algorithm='compiled' runs on CPU float32/float64 tensors; "
            f"got a {z.dtype} tensor on {z.device}. Use 'sort' or 'michelot'."
        )
    return algorithm


def special_rows(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs for the special slices: a NaN, no finite maximum, or a NaN scale.

    Rules, shared by every algorithm, read off the scores ``z`` themselves (a
    positive scale, even 0 or inf, does not change which are NaN or ±inf): a
    NaN score makes the whole slice NaN; else +inf scores share the mass
    equally (the limit of sparsemax as they grow); else a slice of -inf scores
    only gives zeros (threshold -inf, support 0); a slice of finite scores
    that is special has a NaN scale (outside sparsecone's domain) and is NaN.

    Returns ``(output, tau)`` with ``keepdim`` shapes for every slice, meaningful for the
    special ones (the caller selects them); the support size is the output's count of
    positive entries.
    """
    winners = z == math.inf  # (not isposinf, which ONNX exports through float32)
    count = winners.sum(-1, keepdim=True)
    dead = (z == -math.inf).all(-1, keepdim=True)
    nan = torch.isnan(z).any(-1, keepdim=True) | ((count == 0) & ~dead)
    output = torch.where(nan, math.nan, winners.to(z.dtype) / count.clamp(min=1))
    tau = torch.where(nan, math.nan, torch.where(count > 0, math.inf, -math.inf))
    return output, tau.to(z.dtype)


# The threshold searches below take scores shifted so that each row's maximum
# is 0 (sparsemax is translation invariant): then τ ∈ [−1, 0) and subtracting 1
# is never lost to rounding, however large the scores.


def _threshold_sort(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y_sorted, _ = torch.sort(y, dim=-1, descending=True)
    cumsum = y_sorted.cumsum(-1) - 1
    rank = torch.arange(1, y.shape[-1] + 1, device=y.device, dtype=y.dtype)
    # ≥ 1 on the rows it is meant for (their maximum is 0); the clamp keeps the
    # gather in range on the rows that special_rows replaces.
    support = (rank * y_sorted > cumsum).sum(-1, keepdim=True).clamp(min=1)
    tau = cumsum.gather(-1, support - 1) / support
    return tau, support


def _michelot_step(y: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    above = (y > tau) | (y == 0)  # the maxima are always in the support
    support = above.sum(-1, keepdim=True)
    return (torch.where(above, y, 0).sum(-1, keepdim=True) - 1) / support, support


def _with_support_derivative(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``output`` (``[y − τ]_+``), whose autograd derivative is the operator's backward's,
    ``J = I − 11ᵀ/|S|`` on the support ``S = {output > 0}``: the derivative of ``y − τ_S``
    with ``τ_S = (Σ_S y − 1)/|S|``, added as 0 in value to the output taken as a
    constant. The threshold search's own ops take another one-sided derivative where an
    entry sits at τ (integer scores, zeros under sum-normalization++), through ``clamp``,
    whose derivative is 1 at 0."""
    kept = output > 0
    count = kept.sum(-1, keepdim=True).clamp(min=1)
    tau = (torch.where(kept, y, 0).sum(-1, keepdim=True) - 1) / count
    gap = torch.where(kept, y - tau, 0)
    return output.detach() + (gap - gap.detach())


def _threshold_michelot(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # −1 <= τ*, and from below each step stays <= τ*; the support only shrinks
    # (at most K sizes), so after K + 1 steps the last one has changed nothing:
    # an unchanged support means the fixed point.
    k = y.shape[-1]
    tau, support = _michelot_step(y, torch.full_like(y[..., :1], -1.0))
    moving = torch.ones_like(support, dtype=torch.bool)
    for _ in range(min(k + 1, MICHELOT_PASSES) - 1):
        new_tau, new_support = _michelot_step(y, tau)
        moving = new_support != support
        tau, support = new_tau, new_support
    if k + 1 > MICHELOT_PASSES:  # static: a branch on the shape, never on the data
        sort_tau, sort_support = _threshold_sort(y)
        tau = torch.where(moving, sort_tau, tau)
        support = torch.where(moving, sort_support, support)
    return tau, support


def project_torch(
    z: torch.Tensor,
    scale: torch.Tensor | None,
    cone: ConeScale | None,
    algorithm: str,
    mask: torch.Tensor | None = None,
    differentiable: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The projection in plain torch ops, on any device, without a data-dependent branch.

    ``mask`` (boolean, broadcastable to ``z``; False = a score of -inf, output
    0 even in a NaN slice). Returns ``(output, tau, support, scale)`` with
    ``tau``/``support`` of the batch shape and ``scale`` the one computed for
    ``cone`` (``keepdim``). ``differentiable``: autograd through these ops (as
    ``torch.export`` records them) takes the operator's backward's derivatives
    (:func:`_with_support_derivative`).
    """
    if z.dtype in HALF_DTYPES:  # computed in float32, as every kernel computes them
        output, tau, _, computed = project_torch(
            z.float(), scale, cone, algorithm, mask, differentiable
        )
        output = output.to(z.dtype)  # an entry a few float32 ulps above τ may round to 0
        return output, tau.to(z.dtype), (output > 0).sum(-1), computed
    computed = None
    if cone is not None:
        scale = computed = cone.of(z, mask)
    if mask is not None:
        z = z.masked_fill(~mask, -math.inf)
    k = z.shape[-1]
    if torch.compiler.is_exporting():
        # An exported program takes any K, 0 too, where amax and the sort's gather have
        # nothing to take (eager returns early); a -inf score changes no slice's projection.
        z = torch.cat((z, z.new_full((*z.shape[:-1], 1), -math.inf)), -1)
    # (a constant for autograd: the output does not depend on it, and amax's derivative in
    # a NaN slice is 0/0)
    top = z.detach().amax(-1, keepdim=True)
    bad = ~torch.isfinite(top)
    if scale is not None:
        # Scaling after the shift, (z − top)·c ≤ 0, cannot overflow to +inf, and
        # a scale capped at the dtype's largest value still gives the limit of
        # a huge one (the maxima share the mass) where c·z would be inf.
        scale = scale.clamp(max=torch.finfo(z.dtype).max)
        bad = bad | torch.isnan(scale)
    special_output, special_tau = special_rows(z)
    safe_z = torch.where(bad, 0, z)
    top = torch.where(bad, 0, top)
    if scale is None:
        y = safe_z - top
    else:
        scale = torch.where(bad, 1, scale)
        # -inf scores stay -inf under a zero scale (0 · -inf would be NaN), and are
        # kept out of the product, whose backward would meet 0 · -inf too.
        minus_inf = safe_z == -math.inf
        y = torch.where(minus_inf, -math.inf, (torch.where(minus_inf, 0, safe_z) - top) * scale)
    tau, support = (_threshold_sort if algorithm == "sort" else _threshold_michelot)(y)
    output = torch.clamp(y - tau, min=0)
    if differentiable:
        output = _with_support_derivative(output, y)
    output = torch.where(bad, special_output, output)[..., :k]  # (their slices: no gradient)
    if mask is not None:
        output = output.masked_fill(~mask, 0.0)
    tau = torch.where(bad, special_tau, tau + (top if scale is None else top * scale))
    # The support is what the output holds: the search's count can differ from it
    # where rounding puts entries at τ, and the backward must see the output's.
    support = (output > 0).sum(-1)
    return output, tau.squeeze(-1), support, computed


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` (one shape) step through memory alike: the same strides
    wherever a dimension has more than one entry (a size-1 dimension's stride is never used)."""
    strides = zip(a.shape, a.stride(), b.stride(), strict=True)
    return all(n == 1 or sa == sb for n, sa, sb in strides)


def in_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t``, which a kernel wrote for ``like`` (the same shape), in the layout
    ``torch.empty_like(like)`` has: ``like``'s own strides where ``like`` is dense (so a
    dimension moved last for the kernels goes back to where the caller had it), a copy
    only where ``t``'s differ. The operators' outputs have this layout on every path, as
    their fake kernels say."""
    if (t.is_contiguous() and like.is_contiguous()) or _same_layout(t, like):  # (the first:
        return t  # a check in C, for the common case of every call)
    out = torch.empty_like(like, dtype=t.dtype)
    if _same_layout(t, out):
        return t
    moved = _moved_dim(out) if t.is_contiguous() and _tiled(t, out) else None
    if moved is None:
        return out.copy_(t)
    _transpose(t, out.movedim(-1, moved), moved, src_k_last=True)
    return out


def _functorch_wrapped(t: torch.Tensor) -> bool:
    """A functorch wrapper (a ``torch.func.vjp`` pullback's saved tensors, called after
    the transform's level has ended), or a legacy batched tensor (the gradients
    ``autograd.grad(..., is_grads_batched=True)`` hands a backward), is a ``torch.Tensor``
    without storage of its own."""
    functorch = torch._C._functorch
    return functorch.is_functorch_wrapped_tensor(t) or functorch.is_legacy_batchedtensor(t)


def reads_for_free(z: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether a value of ``z``'s (and of ``others``, in the same call) may steer a branch
    at no cost: on the CPU, in a call that nothing records or transforms, and where
    :func:`~sparsegen._validation.on_device` does not say a read would wait. Elsewhere it
    would synchronise a GPU or break a graph."""
    if z.device.type != "cpu" or on_device(z) or torch.compiler.is_compiling():
        return False
    return plain_eager(z, *others)


def plain_eager(*tensors: torch.Tensor | None) -> bool:
    """Whether nothing records, transforms or intercepts a call on these tensors.

    Then the kernels are called directly: the dispatcher's round trip into
    Python (with the autograd kernel it registers) costs more than the
    whole projection of a short row (``sparsegen bench``'s per-call table). Any
    tracer (``torch.jit.trace``, ``make_fx``, export's fake tensors), functorch
    transform, forward-mode AD or tensor subclass takes the operator.
    Under ``torch.compile`` this is never asked (see :func:`sparsegen._ops.project`).
    """
    for t in tensors:
        if t is not None and (type(t) is not torch.Tensor or _functorch_wrapped(t)):
            return False
    return (
        torch._C._get_tracing_state() is None
        and torch._C._functorch.maybe_current_level() is None
        and not torch._C._len_torch_dispatch_stack()
        and torch.autograd.forward_ad._current_level < 0
    )


# Below this many entries a transposing copy is left to torch: the tiled kernel's call
# costs more than it saves.
TILED_MIN_ELEMENTS = 1 << 12
TILED_DTYPES = (torch.float32, torch.float64, torch.bool)


def _tiled(*tensors: torch.Tensor) -> bool:
    """Whether a copy between ``tensors`` may take the tiled transpose of
    :mod:`sparsegen._layout_kernels`, which writes through NumPy, unseen by torch: large
    plain CPU tensors of a dtype NumPy shares, without autograd history, in a call that
    nothing records, transforms or intercepts (no ``torch.compile``, ``jit.trace``,
    ``make_fx`` or other dispatch mode, functorch transform or forward-mode AD)."""
    return (
        tensors[0].numel() >= TILED_MIN_ELEMENTS
        and all(
            u.device.type == "cpu" and u.dtype in TILED_DTYPES and not u.requires_grad
            for u in tensors
        )
        and not torch.compiler.is_compiling()
        and plain_eager(*tensors)
    )


def _moved_dim(t: torch.Tensor) -> int | None:
    """The ``d`` (not the last) for which ``t`` is a dense tensor's dimension ``d`` moved
    last, i.e. ``t.movedim(-1, d)`` is contiguous; None if there is none."""
    return next((d for d in range(t.ndim - 1) if t.movedim(-1, d).is_contiguous()), None)


def _transpose(src: torch.Tensor, dst: torch.Tensor, moved: int, src_k_last: bool) -> None:
    """Copy ``src`` into ``dst``, both contiguous, one of them a dense tensor's dimension
    ``moved`` (of size K) moved last and the other the same tensor: seen as ``(A, C, K)``
    and ``(A, K, C)`` (A the first ``moved`` dimensions, C the rest), a batched transpose.
    ``src_k_last`` says which one ``src`` is."""
    from sparsegen._layout_kernels import transpose  # numba, imported on first use

    k = src.shape[-1] if src_k_last else dst.shape[-1]
    batch = math.prod(src.shape[:moved])
    last, first = (batch, -1, k), (batch, k, -1)
    transpose(
        src.numpy().reshape(last if src_k_last else first),
        dst.numpy().reshape(first if src_k_last else last),
        torch.get_num_threads(),
    )


def contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t.contiguous()``, by the tiled transpose where ``t`` is a large dense CPU tensor
    with one dimension moved last (a mapping along another dimension than the last)."""
    if t.is_contiguous():
        return t
    moved = _moved_dim(t) if _tiled(t) else None
    if moved is None:
        return t.contiguous()
    out = torch.empty(t.shape, dtype=t.dtype)
    _transpose(t.movedim(-1, moved), out, moved, src_k_last=False)
    return out


def _rows(t: torch.Tensor, k: int) -> np.ndarray:
    """``t`` as a C-contiguous ``(rows, k)`` NumPy view (a copy only if not contiguous)."""
    if t.requires_grad:
        t = t.detach()
    rows = contiguous(t).numpy()
    return rows if rows.ndim == 2 else rows.reshape(-1, k)


_ones = np.ones(1 << 16)  # shared by calls of up to as many rows; the kernels only read it


def _row_scale(scale: torch.Tensor | None, z: torch.Tensor) -> np.ndarray:
    """One float64 scale per row: a view of shared ones when there is no scale (a call of
    more rows than they hold gets its own, freed with it, not a buffer kept for good)."""
    rows = z.numel() // z.shape[-1]
    if scale is None:
        return _ones[:rows] if rows <= _ones.shape[0] else np.ones(rows)
    shape = (*z.shape[:-1], 1)
    return scale.detach().to(torch.float64).expand(shape).reshape(rows).contiguous().numpy()


def _row_q(q: float | torch.Tensor, z: torch.Tensor) -> np.ndarray:
    """A cone scale's q, one float64 per row of ``z``."""
    if isinstance(q, torch.Tensor):
        return _row_scale(q, z)
    return np.full(z.numel() // z.shape[-1], q)


def _as_tensor(values: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """A NumPy buffer the kernel wrote, as a tensor of ``shape`` (sharing its memory)."""
    values = torch.from_numpy(values)
    return values if values.ndim == len(shape) else values.reshape(shape)


def _kept_rows(mask: torch.Tensor, z: torch.Tensor, k: int) -> np.ndarray:
    """``mask`` broadcast to ``z`` as C-contiguous ``(rows, k)`` booleans (a copy if broadcast)."""
    if mask.shape != z.shape:
        mask = mask.expand(z.shape)
    return _rows(mask, k)


def project_compiled(
    z: torch.Tensor,
    scale: torch.Tensor | None,
    cone: ConeScale | None,
    info: bool = True,
    keep_scale: bool = True,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """:func:`project_torch` by the numba kernel (CPU float32/float64, non-empty ``z``).

    ``info=False`` leaves the threshold and support as None and
    ``keep_scale=False`` the computed scale: wrapping each has a fixed cost, which
    counts on small inputs.
    """
    # Buffers are NumPy arrays handed to torch: cheaper to make than torch
    # tensors and their NumPy views, and each microsecond here matters (small
    # batches are all overhead). Large ones page-fault no more than torch's
    # (less with glibc's default malloc thresholds).
    k = z.shape[-1]
    computed = None
    kernels = numba_kernels()
    rows = _rows(z, k)
    keep = None if mask is None else _kept_rows(mask, z, k)
    output = np.empty_like(rows)
    tau = np.empty(rows.shape[0], dtype=rows.dtype)
    support = np.empty(rows.shape[0], dtype=np.int64)
    if cone is None:
        row_scale, scale_from, q = _row_scale(scale, z), kernels.SCALE_GIVEN, None
    else:  # the kernel computes each row's scale into row_scale
        row_scale = np.empty(rows.shape[0])
        scale_from = kernels.SCALE_HOURGLASS if cone.mirror else kernels.SCALE_CONE
        q = _row_q(cone.q, z)
    kernels.project_rows(
        rows, keep, row_scale, output, tau, support, torch.get_num_threads(), scale_from, q
    )
    batch = z.shape[:-1]
    if cone is not None and keep_scale:  # the kernel wrote it
        computed = _as_tensor(row_scale, (*batch, 1)).to(z.dtype)
    if not info:
        return _as_tensor(output, z.shape), None, None, computed
    return _as_tensor(output, z.shape), _as_tensor(tau, batch), _as_tensor(support, batch), computed


# The transforms of :mod:`sparsegen._transform_kernels`, by name (index = its constant).
TRANSFORMS = ("exp_gap", "square_gap", "ratio")


def transform_compiled(
    z: torch.Tensor, mask: torch.Tensor | None, kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """A transform of each slice of ``z`` (last dimension) by the numba kernel (CPU
    float32/float64, non-empty, no autograd): ``(transformed, top)``, ``top`` per slice
    with ``keepdim`` in ``z``'s dtype; ``kind`` and the rules in
    :mod:`sparsegen._transform_kernels`."""
    from sparsegen import _transform_kernels as kernels  # numba, imported on first use

    k = z.shape[-1]
    rows = _rows(z, k)
    keep = None if mask is None else _kept_rows(mask, z, k)
    out = np.empty_like(rows)
    top = np.empty(rows.shape[0])
    kernels.transform_rows(rows, keep, TRANSFORMS.index(kind), out, top, torch.get_num_threads())
    return _as_tensor(out, z.shape), torch.from_numpy(top).to(z.dtype).reshape(*z.shape[:-1], 1)


def transform_backward_compiled(
    saved: torch.Tensor,
    mask: torch.Tensor | None,
    grad: torch.Tensor,
    top: torch.Tensor,
    kind: str,
) -> torch.Tensor:
    """``∂L/∂z`` of :func:`transform_compiled`'s ``"exp_gap"`` (``saved``: the gaps) or
    ``"square_gap"`` (``saved``: the scores) by the numba kernel, in ``saved``'s dtype
    (``grad``'s too) and layout."""
    from sparsegen import _transform_kernels as kernels  # numba, imported on first use

    k = saved.shape[-1]
    rows = _rows(saved, k)
    keep = None if mask is None else _kept_rows(mask, saved, k)
    out = np.empty_like(rows)
    n_threads = torch.get_num_threads()
    per_row = _row_scale(top, saved)
    kind_code = TRANSFORMS.index(kind)
    kernels.transform_backward_rows(rows, keep, _rows(grad, k), per_row, kind_code, out, n_threads)
    return in_layout(_as_tensor(out, saved.shape), saved)


def project_transformed_compiled(
    z: torch.Tensor, mask: torch.Tensor | None, kind: str, log_c: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sparsemax(scale · gap(z))`` along the last dimension for long rows, masked or
    not (CPU float32/float64, no autograd), ``kind`` ``"exp_gap"`` or ``"square_gap"``,
    ``log_c = −log(1−λ)`` (a float, or a tensor broadcastable to one per slice): the
    output, the gaps' threshold and the support size, without the transformed
    tensor (:func:`sparsegen._transform_kernels.project_transformed_long_rows`)."""
    from sparsegen import _transform_kernels as kernels  # numba, imported on first use

    k = z.shape[-1]
    rows = _rows(z, k)
    if isinstance(log_c, torch.Tensor):
        log_c = _row_scale(log_c, z)
    else:
        log_c = np.full(rows.shape[0], log_c)
    output = np.empty_like(rows)
    tau = np.empty(rows.shape[0], dtype=rows.dtype)
    support = np.empty(rows.shape[0], dtype=np.int64)
    keep = None if mask is None else _kept_rows(mask, z, k)
    kernels.project_transformed_long_rows(
        rows, keep, TRANSFORMS.index(kind), log_c, output, tau, support, torch.get_num_threads()
    )
    batch = z.shape[:-1]
    return _as_tensor(output, z.shape), _as_tensor(tau, batch), _as_tensor(support, batch)


def fill_masked_compiled(z: torch.Tensor, mask: torch.Tensor, value: float) -> torch.Tensor:
    """``z.masked_fill(~mask, value)`` by the numba kernel (CPU float32/float64, no autograd)."""
    k = z.shape[-1]
    rows = _rows(z, k)
    out = np.empty_like(rows)
    numba_kernels().fill_masked(rows, _kept_rows(mask, z, k), value, out)
    return _as_tensor(out, z.shape)


def kept_sums_compiled(
    z: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`kept_sum` along the last dimension by the numba kernel in one read (CPU
    float32/float64, no autograd): ``(total, K, unit)``, ``keepdim``, in float64, where
    torch takes a select, a float64 copy and a count of the mask (and, for float64
    scores, the passes that look for an overflowed sum)."""
    k = z.shape[-1]
    rows = _rows(z, k)
    keep = None if mask is None else _kept_rows(mask, z, k)
    total, count, unit = (np.empty(rows.shape[0]) for _ in range(3))
    numba_kernels().kept_sums_rows(rows, keep, total, count, unit, torch.get_num_threads())
    shape = (*z.shape[:-1], 1)
    return tuple(torch.from_numpy(a).reshape(shape) for a in (total, count, unit))


def sum_signs_compiled(
    z: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each slice's sign of the sum of its kept entries (0 for a NaN's, as torch's) and
    their count (``keepdim``, in float64), by :func:`kept_sums_compiled`: what the backward
    of sparsecone and sparsehourglass needs of the scores."""
    total, count, _ = kept_sums_compiled(z, mask)
    return total.sign(), count


def add_where_kept_compiled(out: torch.Tensor, mask: torch.Tensor, per_slice: torch.Tensor) -> None:
    """``out += where(mask, per_slice, 0)`` in place by the numba kernel (``out`` a CPU
    float32/float64 buffer of its own, C-contiguous; ``per_slice`` one value a slice)."""
    k = out.shape[-1]
    rows = out.view(-1, k).numpy()
    numba_kernels().add_where_kept(rows, _kept_rows(mask, out, k), _row_scale(per_slice, out))


def add_where_kept(
    out: torch.Tensor, mask: torch.Tensor | None, per_slice: torch.Tensor
) -> torch.Tensor:
    """``out + where(mask, per_slice, 0)`` in ``out``'s own buffer (a kernel's output): by
    the numba kernel where it takes ``out`` (:func:`add_where_kept_compiled`)."""
    if mask is None:
        return out.add_(per_slice)
    if out.is_contiguous() and compilable(out):
        add_where_kept_compiled(out, mask, per_slice)
        return out
    return out.add_(torch.where(mask, per_slice, 0.0))


def vjp_torch(
    output: torch.Tensor, support: torch.Tensor, grad: torch.Tensor, scale: torch.Tensor | None
) -> torch.Tensor:
    """``Jᵀ g`` for ``z ↦ sparsemax(c z)``: ``c · s ⊙ (g − mean_{j∈S} g_j)``, O(K), no K×K.

    ``S = {output > 0}``, counted here: ``support`` (the forward's count, the same
    by construction) is not trusted, so a wrong one cannot skew the mean. In
    ``grad``'s dtype, whatever ``scale``'s (a float32 scale of half scores); half
    precision computed in float32.
    """
    dtype = grad.dtype
    in_support = output > 0
    if grad.dtype in HALF_DTYPES:
        grad = grad.float()
    count = in_support.sum(-1, keepdim=True).clamp(min=1)
    mean = torch.where(in_support, grad, 0).sum(-1, keepdim=True) / count
    result = torch.where(in_support, grad - mean, 0)
    return (result if scale is None else result * scale).to(dtype)


def vjp_compiled(
    output: torch.Tensor, support: torch.Tensor, grad: torch.Tensor, scale: torch.Tensor | None
) -> torch.Tensor:
    """:func:`vjp_torch` by the numba kernel (CPU, ``grad`` in ``output``'s dtype)."""
    return _vjp_rows(output, support, grad, scale, None)


def scaled_vjp_compiled(
    output: torch.Tensor,
    support: torch.Tensor,
    grad: torch.Tensor,
    scale: torch.Tensor,
    per_scale: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The VJP for a scale that takes a gradient, in one kernel call (CPU, ``grad`` and
    ``scale`` in ``output``'s dtype): ``c·u`` with ``u = J_sparsemaxᵀ g``, and each slice's
    moment ``Σ_S u_j (out_j − max out) = c Σ_S u_j z_j``, shape ``(*batch, 1)``. A slice
    whose scale is 0, inf or NaN gets ``u·scale`` (0 for ``0 · inf``) and a moment of 0.
    With ``per_scale``, the moment divided by the scale: the scale's gradient."""
    moment = np.empty(output.numel() // output.shape[-1])
    result = _vjp_rows(output, support, grad, scale, moment)
    shape = (*output.shape[:-1], 1)
    moment = torch.from_numpy(moment).to(scale.dtype).reshape(shape)
    return result, moment_per_scale(moment, scale) if per_scale else moment


def moment_per_scale(moment: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A scaled VJP's moment divided by its slice's scale, the scale's gradient; the
    moment of a slice whose scale is 0, inf or NaN is 0, and stays so."""
    return moment / torch.where(torch.isfinite(scale) & (scale != 0), scale, 1.0)


def _vjp_rows(output, support, grad, scale, moment):
    k = output.shape[-1]
    rows = _rows(output, k)
    result = np.empty_like(rows)
    numba_kernels().backward_rows(
        rows,
        _rows(grad, k),
        _row_scale(scale, output),
        _rows(support, 1).reshape(-1),
        result,
        torch.get_num_threads(),
        moment,
    )
    return _as_tensor(result, output.shape)
