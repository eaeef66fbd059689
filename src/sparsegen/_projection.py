r"""The one Euclidean projection onto the probability simplex that every mapping uses.

.. math::

    \operatorname{sparsemax}(c\,z) = \operatorname*{argmin}_{p \in \Delta} \lVert p - c\,z \rVert^2
    = [c\,z - \tau]_+, \qquad \textstyle\sum_j [c\,z_j - \tau]_+ = 1.

The per-slice scale ``c`` is fused into the projection because most of the
sparsegen family is a rescaled sparsemax (MATH.md, Eq. 2): sparsegen-lin uses
``c = 1/(1-λ)``, sparsecone and sparsehourglass a data-dependent ``α(z)``.

Three exact implementations compute the threshold ``τ``; all agree to rounding:

``"sort"``
    Martins & Astudillo's Algorithm 1, O(K log K), any device.
``"michelot"``
    Michelot's fixed point, which is Newton's method on ``Σ_j [y_j − τ]_+ = 1``
    started from the lower bound ``max(y) − 1``: each step is one vectorised
    O(K) pass, τ rises monotonically and is exact as soon as the support stops
    shrinking (typically 3–7 steps). Any device. Rows still moving after
    ``MICHELOT_MAX_STEPS`` are finished by ``"sort"``, so the passes are bounded.
``"compiled"``
    The same Newton iteration compiled with numba for CPU float32/float64
    (``sparsegen._kernels``): scores shifted by their maximum and summed in their own dtype,
    short rows solved several at a time, long rows first reduced to their few
    candidates in one pass, rows in parallel. Each step that is not the last
    shrinks the support, so at most K + 1 steps are taken.
``"auto"``
    ``"compiled"`` for CPU float32/float64 tensors when numba is importable,
    else ``"michelot"``.

Special values are handled identically by every algorithm (see :func:`special_rows`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch.autograd.function import once_differentiable

ALGORITHMS = ("auto", "sort", "michelot", "compiled")

# Michelot steps before the rows still moving are handed to the sort algorithm.
MICHELOT_MAX_STEPS = 16


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


class SumScale(NamedTuple):
    r"""A scale the projection computes from the scores' sum: sparsecone's or sparsehourglass's.

    $$
    \alpha(z) = \frac{1 + Kq}{\sum_j z_j + Kq}, \qquad
    \hat\alpha(z) = \frac{1 + Kq}{\lvert\sum_j z_j\rvert + Kq} \quad (\text{mirror}),
    $$

    per slice of ``K`` entries (no mask), ``q > 0``; sparsecone's α is NaN where
    its denominator is ≤ 0 (outside its domain). Passed as ``scale``, it lets
    the compiled kernel compute the scale in the same call instead of in
    separate torch passes; the backward adds the scale's own gradient,
    ``∂α/∂z_i = −α²/(1 + Kq)`` (times ``sign(Σ_j z_j)`` for α̂).
    """

    q: float
    mirror: bool  # sparsehourglass's |Σz|

    def of(self, z: torch.Tensor) -> torch.Tensor:
        """The scale of each slice of ``z`` (last dimension), with ``keepdim``."""
        total = z.sum(-1, keepdim=True)
        kq = z.shape[-1] * self.q
        if self.mirror:  # ≥ Kq > 0 (an underflow to 0 gives inf: capped, the limit)
            return (1 + kq) / (total.abs() + kq)
        denominator = total + kq
        return torch.where(denominator > 0, (1 + kq) / denominator, math.nan)

    def grad(self, z: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``∂α/∂z_i`` (the same for every i), with ``keepdim``."""
        grad = -(scale**2) / (1 + z.shape[-1] * self.q)
        return grad * z.sum(-1, keepdim=True).sign() if self.mirror else grad


Scale = torch.Tensor | SumScale | None

_numba_kernels = None


def _kernels():
    """The compiled kernels, imported on first use (None when numba is missing)."""
    global _numba_kernels
    if _numba_kernels is None:
        try:
            from sparsegen import _kernels as module
        except ImportError:  # pragma: no cover - numba is a declared dependency
            module = False
        _numba_kernels = module
    return _numba_kernels or None


def resolve_algorithm(algorithm: str, z: torch.Tensor) -> str:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}; got {algorithm!r}")
    compilable = z.is_cpu and z.dtype in (torch.float32, torch.float64)
    if algorithm == "auto":
        return "compiled" if compilable and _kernels() is not None else "michelot"
    if algorithm == "compiled" and not compilable:
        raise ValueError(
            "algorithm='compiled' runs on CPU float32/float64 tensors; "
            f"got a {z.dtype} tensor on {z.device}. Use 'sort' or 'michelot'."
        )
    if algorithm == "compiled" and _kernels() is None:  # pragma: no cover
        raise RuntimeError("algorithm='compiled' needs numba, which could not be imported")
    return algorithm


def special_rows(
    y: torch.Tensor, bad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Outputs for the slices marked ``bad``: those whose maximum or scale is not finite.

    Rules, shared by every algorithm, applied to the scaled scores ``y``: a NaN
    score (or scale) makes the whole slice NaN; +inf scores share the mass
    equally (the limit of sparsemax as they grow); a slice of -inf scores only
    gives zeros (threshold -inf, support 0).

    Returns ``(output, tau, support)`` with ``keepdim`` shapes, meaningful
    where ``bad`` is True.
    """
    top = y.amax(-1, keepdim=True)  # NaN propagates
    nan = torch.isnan(top) & bad
    winners = torch.isposinf(y)
    count = winners.sum(-1, keepdim=True)
    nan_fill = torch.full_like(top, float("nan"))
    output = torch.where(nan, nan_fill, winners / count.clamp(min=1))
    tau = torch.where(nan, nan_fill, top)
    support = torch.where(nan, 0, count)
    return output, tau, support


# The threshold searches below take scores shifted so that each row's maximum
# is 0 (sparsemax is translation invariant): then τ ∈ [−1, 0) and subtracting 1
# is never lost to rounding, however large the scores.


def _threshold_sort(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y_sorted, _ = torch.sort(y, dim=-1, descending=True)
    cumsum = y_sorted.cumsum(-1) - 1
    rank = torch.arange(1, y.shape[-1] + 1, device=y.device, dtype=y.dtype)
    support = (rank * y_sorted > cumsum).sum(-1, keepdim=True)
    tau = cumsum.gather(-1, support - 1) / support
    return tau, support


def _michelot_step(y: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    above = (y > tau) | (y == 0)  # the maxima are always in the support
    support = above.sum(-1, keepdim=True)
    return (torch.where(above, y, 0).sum(-1, keepdim=True) - 1) / support, support


def _threshold_michelot(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # −1 <= τ*, and from below each step stays <= τ*; the support only
    # shrinks, so an unchanged support size means the fixed point.
    tau, support = _michelot_step(y, torch.full_like(y[..., :1], -1.0))
    moving = torch.ones_like(support, dtype=torch.bool)
    for _ in range(MICHELOT_MAX_STEPS):
        new_tau, new_support = _michelot_step(y, tau)
        moving = new_support != support
        tau, support = new_tau, new_support
        if not bool(moving.any()):
            return tau, support
    rows = moving.squeeze(-1)
    tau[rows], support[rows] = _threshold_sort(y[rows])
    return tau, support


def _project_torch(z: torch.Tensor, scale: torch.Tensor | None, algorithm: str) -> ProjectionResult:
    top = z.amax(-1, keepdim=True)
    bad = ~torch.isfinite(top)
    if scale is not None:
        # Scaling after the shift, (z − top)·c ≤ 0, cannot overflow to +inf, and
        # a scale capped at the dtype's largest value still gives the limit of
        # a huge one (the maxima share the mass) where c·z would be inf.
        scale = scale.clamp(max=torch.finfo(z.dtype).max)
        bad = bad | torch.isnan(scale)
    special = bool(bad.any())
    if special:
        special_output, special_tau, special_support = special_rows(
            z if scale is None else z * scale, bad
        )
        z = torch.where(bad, 0, z)
        top = torch.where(bad, 0, top)
        scale = None if scale is None else torch.where(bad, 1, scale)
    y = z - top if scale is None else (z - top) * scale
    tau, support = (_threshold_sort if algorithm == "sort" else _threshold_michelot)(y)
    output = torch.clamp(y - tau, min=0)
    tau = tau + (top if scale is None else top * scale)
    if special:
        output = torch.where(bad, special_output, output)
        tau = torch.where(bad, special_tau, tau)
        support = torch.where(bad, special_support, support)
    return ProjectionResult(output, tau.squeeze(-1), support.squeeze(-1))


def _rows(t: torch.Tensor, k: int) -> np.ndarray:
    """``t`` as a C-contiguous ``(rows, k)`` NumPy view (a copy only if not contiguous)."""
    if t.requires_grad:
        t = t.detach()
    rows = (t if t.is_contiguous() else t.contiguous()).numpy()
    return rows if rows.ndim == 2 else rows.reshape(-1, k)


_ones = np.ones(4096)  # grown on demand; the kernels only read their scales


def _row_scale(scale: torch.Tensor | None, z: torch.Tensor) -> np.ndarray:
    """One float64 scale per row: a view of shared ones when there is no scale."""
    global _ones
    rows = z.numel() // z.shape[-1]
    if scale is None:
        if rows > _ones.shape[0]:
            _ones = np.ones(max(rows, 2 * _ones.shape[0]))
        return _ones[:rows]
    shape = (*z.shape[:-1], 1)
    return scale.detach().to(torch.float64).expand(shape).reshape(rows).contiguous().numpy()


def _as_tensor(values: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """A NumPy buffer the kernel wrote, as a tensor of ``shape`` (sharing its memory)."""
    values = torch.from_numpy(values)
    return values if values.ndim == len(shape) else values.reshape(shape)


def _project_compiled(
    z: torch.Tensor, scale: Scale, keep_scale: bool, info: bool
) -> tuple[ProjectionResult | torch.Tensor, Scale]:
    # Buffers are NumPy arrays handed to torch: cheaper to make than torch
    # tensors and their NumPy views, and each microsecond here matters (small
    # batches are all overhead). Large ones page-fault no more than torch's
    # (less with glibc's default thresholds: 8 vs 29 ms for a 64 MiB output).
    k = z.shape[-1]
    rows = _rows(z, k)
    output = np.empty_like(rows)
    tau = np.empty(rows.shape[0], dtype=rows.dtype)
    support = np.empty(rows.shape[0], dtype=np.int64)
    if isinstance(scale, SumScale):
        row_scale, q, mirror = np.empty(rows.shape[0]), scale.q, scale.mirror  # kernel-written
    else:
        row_scale, q, mirror = _row_scale(scale, z), -1.0, True
    _kernels().project_rows(
        rows, row_scale, output, tau, support, torch.get_num_threads(), q, mirror
    )
    if isinstance(scale, SumScale):  # as a tensor only for the backward
        scale = _as_tensor(row_scale, (*z.shape[:-1], 1)).to(z.dtype) if keep_scale else None
    output = _as_tensor(output, z.shape)
    if not info:
        return output, scale
    batch = z.shape[:-1]
    return ProjectionResult(output, _as_tensor(tau, batch), _as_tensor(support, batch)), scale


def _project_scaled(
    z: torch.Tensor, scale: Scale, algorithm: str, keep_scale: bool = True, info: bool = True
) -> tuple[ProjectionResult | torch.Tensor, torch.Tensor | None]:
    """:func:`project`, and the scale as a tensor (computed here for :class:`SumScale`).

    ``keep_scale=False`` lets the compiled path skip making the computed scale a
    tensor, and ``info=False`` its per-slice results: the output comes alone.
    """
    algorithm = resolve_algorithm(algorithm, z)
    if z.numel() == 0:
        batch = z.shape[:-1]
        empty = ProjectionResult(
            torch.empty_like(z),
            torch.full(batch, float("nan"), dtype=z.dtype, device=z.device),
            torch.zeros(batch, dtype=torch.int64, device=z.device),
        )
        scale = scale.of(z) if isinstance(scale, SumScale) else scale
        return (empty if info else empty.output), scale
    if algorithm == "compiled":
        return _project_compiled(z, scale, keep_scale, info)
    if isinstance(scale, SumScale):
        scale = scale.of(z)
    result = _project_torch(z, scale, algorithm)
    return (result if info else result.output), scale


def project(
    z: torch.Tensor, scale: Scale = None, algorithm: str = "auto", return_info: bool = True
) -> ProjectionResult | torch.Tensor:
    """Project ``scale * z`` onto the simplex along the last dimension (no autograd).

    ``scale`` is None, a positive (or NaN) tensor broadcastable to
    ``(*z.shape[:-1], 1)`` (a NaN scale makes its slice NaN), or a
    :class:`SumScale`. ``return_info=False`` returns the output alone, without
    wrapping the per-slice threshold and support size (a microsecond, which
    counts on small inputs).
    """
    return _project_scaled(z, scale, algorithm, keep_scale=False, info=return_info)[0]


def projection_vjp(
    output: torch.Tensor,
    support: torch.Tensor,
    grad: torch.Tensor,
    scale: torch.Tensor | None,
    compiled: bool,
) -> torch.Tensor:
    """``Jᵀ g`` for ``z ↦ sparsemax(c z)``: ``c · s ⊙ (g − mean_{j∈S} g_j)``, O(K), no K×K.

    ``compiled`` selects the numba kernel (CPU float32/float64), else the
    vectorised torch formula that runs on any device.
    """
    if compiled and grad.dtype == output.dtype and output.numel() > 0:
        k = output.shape[-1]
        rows = _rows(output, k)
        result = np.empty_like(rows)
        _kernels().backward_rows(
            rows,
            _rows(grad, k),
            _row_scale(scale, output),
            _rows(support, 1).reshape(-1),
            result,
            torch.get_num_threads(),
        )
        return _as_tensor(result, output.shape)
    in_support = output > 0
    count = support.unsqueeze(-1).clamp(min=1)
    mean = torch.where(in_support, grad, 0).sum(-1, keepdim=True) / count
    result = torch.where(in_support, grad - mean, 0)
    return result if scale is None else result * scale


class SparsemaxFunction(torch.autograd.Function):
    """Autograd for ``(z, scale) ↦ sparsemax(scale * z)`` along the last dimension.

    The backward reuses the saved output and support size (never the K×K
    Jacobian), with the kernel that matches the forward's algorithm. The input
    ``z`` is saved only when the scale needs a gradient:
    ``∂L/∂c = Σ_j z_j (J_sparsemaxᵀ g)_j``, which for a :class:`SumScale`
    flows on to ``z`` through ``∂α̂/∂z``.
    """

    @staticmethod
    def forward(ctx, z, scale, algorithm):
        algorithm = resolve_algorithm(algorithm, z)
        ctx.compiled = algorithm == "compiled"
        ctx.sum_scale = scale if isinstance(scale, SumScale) else None
        result, scale = _project_scaled(z, scale, algorithm)
        needs_z = ctx.sum_scale is not None or (scale is not None and ctx.needs_input_grad[1])
        ctx.save_for_backward(result.output, result.support_size, scale, z if needs_z else None)
        ctx.mark_non_differentiable(result.threshold, result.support_size)
        return result

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output, _grad_tau, _grad_support):
        output, support, scale, z = ctx.saved_tensors
        if z is None:
            return projection_vjp(output, support, grad_output, scale, ctx.compiled), None, None
        grad_unscaled = projection_vjp(output, support, grad_output, None, ctx.compiled)
        # Only the support counts: masked entries are -inf and 0 · -inf would be NaN.
        on_support = torch.where(output > 0, grad_unscaled * z, 0)
        grad_scale = on_support.sum(-1, keepdim=True)
        if ctx.sum_scale is not None:
            return grad_unscaled * scale + grad_scale * ctx.sum_scale.grad(z, scale), None, None
        return grad_unscaled * scale, grad_scale.sum_to_size(scale.shape), None


def sparsemax_last_dim(
    z: torch.Tensor, scale: Scale = None, algorithm: str = "auto", return_info: bool = True
) -> ProjectionResult | torch.Tensor:
    """Differentiable :func:`project`."""
    needs_grad = torch.is_grad_enabled() and (
        z.requires_grad or (isinstance(scale, torch.Tensor) and scale.requires_grad)
    )
    if needs_grad:
        result = ProjectionResult(*SparsemaxFunction.apply(z, scale, algorithm))
        return result if return_info else result.output
    return project(z, scale, algorithm, return_info)
