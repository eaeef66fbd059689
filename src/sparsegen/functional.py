r"""Probability mappings: softmax, sparsemax and the sparsegen family.

Every function maps scores along ``dim`` to a probability distribution, takes a
torch tensor (any shape; dtype and device preserved; float16/bfloat16 computed
in float32) or a NumPy array (returns a NumPy array), and an optional boolean
``mask`` broadcastable to the input (True = keep; masked entries get exactly 0
and take no part in the normalisation; a fully masked slice gives zeros).

All sparse members are one projection (Laha et al. 2018, Eq. 2):

$$
\mathrm{sparsegen}(z; g, \lambda) = \mathrm{sparsemax}\big(g(z)/(1-\lambda)\big)
$$

so they share one kernel (``sparsegen._projection``), its backward pass and its
handling of special values in the projected scores ``g(z)/(1-λ)`` (for
``sparsegen_exp``, ``exp(-inf) = 0`` is an ordinary score, and for ``sparsegen_sq``
``(-inf)² = +inf`` the largest: use ``mask`` to exclude entries):

* a NaN in a slice gives a NaN slice (never a hang);
* ``-inf`` scores get 0; a slice of ``-inf`` only gives zeros (where
  ``torch.softmax`` gives NaN), so fully masked rows stay finite;
* ``+inf`` scores share the mass equally (the limit of the mapping).

``return_info=True`` (sparse mappings) returns a
:class:`~sparsegen.ProjectionResult` ``(output, threshold, support_size)``
computed in the same pass; ``threshold`` is ``τ`` for the projected scores
(``z/(1-λ)``, ``α(z) z``, …; for sparsegen-exp and -sq, ``(g(z) − g(M))/(1-λ)``, which
cannot overflow: add ``g(M)/(1-λ)`` for ``g(z)/(1-λ)``'s) and both extra fields have
``dim`` removed.

``algorithm`` picks the exact threshold algorithm: ``"auto"`` (the compiled
kernel on CPU, the Triton kernels on CUDA, Michelot or sort elsewhere), ``"sort"``,
``"michelot"``, ``"compiled"`` or ``"triton"``.
The output has the input's memory layout (the strides ``torch.empty_like`` gives it)
along any ``dim``. The compiled kernel's outputs along the last dimension live in
NumPy-allocated memory (cheaper to make, and large ones page-fault less); like any
``torch.from_numpy`` tensor they cannot be grown in place with ``resize_``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, Protocol, TypeVar, overload

import numpy as np
import torch

from sparsegen._ops import (
    exporting,
    fill_masked,
    parameter_in_kernel,
    plain_eager,
    project,
    project_cone,
    project_lin,
    project_transformed_rows,
    sum_normalization_in_kernel,
    transform_rows,
)
from sparsegen._projection import (
    ConeScale,
    ProjectionResult,
    Scale,
    in_layout,
    reads_for_free,
    resolve_algorithm,
    slice_scale,
)
from sparsegen._validation import (
    HALF_DTYPES,
    Parameter,
    ParameterLike,
    accepts_numpy,
    check_dim,
    check_input,
    check_mask,
    check_values,
    compute_dtype,
    is_inf,
    log_one_minus,
    number_tensor,
    on_device,
    plain,
    slice_lam,
    slice_q,
)

__all__ = [
    "hardmax",
    "softmax",
    "sparsecone",
    "sparsegen",
    "sparsegen_exp",
    "sparsegen_lin",
    "sparsegen_sq",
    "sparsehourglass",
    "sparsemax",
    "spherical_softmax",
    "sum_normalization",
    "sum_normalization_pp",
]

Output = torch.Tensor | ProjectionResult

# ----- the signatures type checkers see ----------------------------------------------------
# Each mapping returns the input's kind (a tensor, or an array for an array) and, with
# return_info=True, a ProjectionResult: overloads on return_info, one protocol per family of
# parameters, given to the functions by _typed (a no-op at run time).

Array = TypeVar("Array", torch.Tensor, np.ndarray)
Mask = torch.Tensor | np.ndarray | None
Transform = Callable[[torch.Tensor], torch.Tensor]
_T = TypeVar("_T")


def _typed(signature: type[_T]) -> Callable[[Callable[..., Any]], _T]:
    """The function as is, typed by the protocol ``signature`` (its overloads)."""
    return lambda function: function  # type: ignore[return-value]


class _Function(Protocol):
    __name__: str
    __qualname__: str
    __doc__: str | None


# fmt: off
class _Plain(_Function, Protocol):  # sparsemax, sum_normalization_pp
    @overload
    def __call__(self, x: Array, dim: int = -1, *, mask: Mask = None, algorithm: str = "auto",
                 return_info: Literal[False] = False) -> Array: ...
    @overload
    def __call__(self, x: Array, dim: int = -1, *, mask: Mask = None, algorithm: str = "auto",
                 return_info: Literal[True]) -> ProjectionResult: ...
    @overload  # a flag known only at run time
    def __call__(self, x: Array, dim: int = -1, *, mask: Mask = None, algorithm: str = "auto",
                 return_info: bool = False) -> Array | ProjectionResult: ...


class _WithG(_Function, Protocol):  # sparsegen
    @overload
    def __call__(self, x: Array, g: Transform, *, lam: ParameterLike = 0.0, dim: int = -1,
                 mask: Mask = None, algorithm: str = "auto",
                 return_info: Literal[False] = False) -> Array: ...
    @overload
    def __call__(self, x: Array, g: Transform, *, lam: ParameterLike = 0.0, dim: int = -1,
                 mask: Mask = None, algorithm: str = "auto",
                 return_info: Literal[True]) -> ProjectionResult: ...
    @overload  # a flag known only at run time
    def __call__(self, x: Array, g: Transform, *, lam: ParameterLike = 0.0, dim: int = -1,
                 mask: Mask = None, algorithm: str = "auto",
                 return_info: bool = False) -> Array | ProjectionResult: ...


class _WithLam(_Function, Protocol):  # sparsegen_lin, sparsegen_exp, sparsegen_sq
    @overload
    def __call__(self, x: Array, *, lam: ParameterLike = 0.0, dim: int = -1, mask: Mask = None,
                 algorithm: str = "auto", return_info: Literal[False] = False) -> Array: ...
    @overload
    def __call__(self, x: Array, *, lam: ParameterLike = 0.0, dim: int = -1, mask: Mask = None,
                 algorithm: str = "auto", return_info: Literal[True]) -> ProjectionResult: ...
    @overload  # a flag known only at run time
    def __call__(self, x: Array, *, lam: ParameterLike = 0.0, dim: int = -1, mask: Mask = None,
                 algorithm: str = "auto",
                 return_info: bool = False) -> Array | ProjectionResult: ...


class _WithQ(_Function, Protocol):  # sparsecone, sparsehourglass
    @overload
    def __call__(self, x: Array, *, q: ParameterLike = 1.0, dim: int = -1, mask: Mask = None,
                 algorithm: str = "auto", return_info: Literal[False] = False) -> Array: ...
    @overload
    def __call__(self, x: Array, *, q: ParameterLike = 1.0, dim: int = -1, mask: Mask = None,
                 algorithm: str = "auto", return_info: Literal[True]) -> ProjectionResult: ...
    @overload  # a flag known only at run time
    def __call__(self, x: Array, *, q: ParameterLike = 1.0, dim: int = -1, mask: Mask = None,
                 algorithm: str = "auto",
                 return_info: bool = False) -> Array | ProjectionResult: ...


class _Dense(_Function, Protocol):  # hardmax, sum_normalization, spherical_softmax
    def __call__(self, x: Array, dim: int = -1, *, mask: Mask = None) -> Array: ...


class _Softmax(_Function, Protocol):
    def __call__(self, x: Array, dim: int = -1, dtype: torch.dtype | None = None, *,
                 mask: Mask = None) -> Array: ...
# fmt: on


def _inputs(
    x: torch.Tensor, mask: torch.Tensor | None, dim: int, name: str, algorithm: str | None = None
) -> tuple[torch.Tensor, torch.dtype, torch.Tensor | None, int]:
    """The checked input in its compute dtype, its own dtype, the checked mask and ``dim``.

    ``algorithm``: given by the mappings that project the input as it is (no transform
    in torch first, or only after an explicit cast to the compute dtype); half precision
    that the Triton kernels will project then stays half, since they compute in float32
    themselves: a float32 copy in and out would move five times the bytes that the
    projection does."""
    z, dtype = check_input(x, name, keep_half=_triton_reads_half(x, algorithm))
    return z, dtype, check_mask(mask, z, name), check_dim(dim, name)


def _triton_reads_half(x: object, algorithm: str | None) -> bool:
    """Whether ``x`` is half precision that ``algorithm`` sends to the Triton kernels."""
    return (
        algorithm in ("auto", "triton")
        and isinstance(x, torch.Tensor)
        and x.dtype in HALF_DTYPES
        and resolve_algorithm(algorithm, x) == "triton"
    )


def _project(
    scores: torch.Tensor,
    dim: int,
    mask: torch.Tensor | None,
    scale: Parameter | Scale,
    algorithm: str,
    return_info: bool,
    out_dtype: torch.dtype,
) -> Output:
    """``sparsemax(scale * scores)`` along ``dim``, masked, cast back to ``out_dtype``.

    The mask goes into the projection (masked entries are -inf scores there),
    not through a ``masked_fill`` pass.
    """
    last = dim in (-1, scores.ndim - 1)  # skip two no-op movedims, a cost on every call
    if not last:
        if isinstance(scale, torch.Tensor) and scale.ndim > 0:
            scale = scale.movedim(dim, -1)
        if isinstance(scale, ConeScale) and isinstance(scale.q, torch.Tensor) and scale.q.ndim:
            scale = scale._replace(q=scale.q.movedim(dim, -1))
        mask = _mask_to_last(mask, scores.ndim, dim)
        scores = scores.movedim(dim, -1)
    result = project(scores, scale, algorithm, return_info, mask)
    parts = result if return_info else (result, None, None)
    return _restored(*parts, dim, last, return_info, out_dtype)


def _restored(
    output: torch.Tensor,
    threshold: torch.Tensor | None,
    support: torch.Tensor | None,
    dim: int,
    last: bool,
    return_info: bool,
    out_dtype: torch.dtype,
) -> Output:
    """A projection along the last dimension put back along ``dim`` (``last``: it was
    there) and cast back to ``out_dtype`` (half precision was computed in float32)."""
    output = output if last else output.movedim(-1, dim)
    if out_dtype != output.dtype:
        output = output.to(out_dtype)
        if return_info:  # an entry a few float32 ulps above τ rounds to 0 in a half type
            support = (output > 0).sum(dim)
    if not return_info:
        return output
    return ProjectionResult(output, threshold.to(out_dtype), support)


def _mask_to_last(mask: torch.Tensor | None, ndim: int, dim: int) -> torch.Tensor | None:
    """A mask broadcastable to an ``ndim``-D input, with ``dim`` moved last."""
    if mask is None:
        return None
    return mask.reshape((1,) * (ndim - mask.ndim) + mask.shape).movedim(dim, -1)


def _transform_by_kernel(
    z: torch.Tensor, dim: int, mask: torch.Tensor | None, kind: str, algorithm: str
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(transformed, top)`` along ``dim`` by one kernel pass (numba's or Triton's), or
    None where the caller's torch code runs instead (:func:`sparsegen._ops.transform_rows`)."""
    if dim in (-1, z.ndim - 1):
        return transform_rows(z, mask, kind, algorithm)
    result = transform_rows(z.movedim(dim, -1), _mask_to_last(mask, z.ndim, dim), kind, algorithm)
    # the transformed scores come back as a view that _project moves back without a copy
    return None if result is None else (result[0].movedim(-1, dim), result[1].movedim(-1, dim))


def _along_last(
    z: torch.Tensor, dim: int, mask: torch.Tensor | None, lam: Parameter
) -> tuple[torch.Tensor, torch.Tensor | None, Parameter, bool]:
    """``(z, mask, lam, last)`` with ``dim`` moved last (views; ``lam`` a number or a
    tensor of ``z``'s rank, or 0-d), and whether it was last already, for
    :func:`_restored`."""
    last = dim in (-1, z.ndim - 1)
    if not last:
        mask = _mask_to_last(mask, z.ndim, dim)
        z = z.movedim(dim, -1)
        if isinstance(lam, torch.Tensor) and lam.ndim:
            lam = lam.movedim(dim, -1)
    return z, mask, lam, last


def _projected_from_scores(
    z: torch.Tensor,
    dim: int,
    mask: torch.Tensor | None,
    kind: str,
    lam: Parameter,
    algorithm: str,
    return_info: bool,
    out_dtype: torch.dtype,
) -> Output | None:
    """Sparsegen-exp's or -sq's output projected from the scores themselves
    (:func:`sparsegen._ops.project_transformed_rows`), or None."""
    z, mask, lam, last = _along_last(z, dim, mask, lam)
    # (_gaps_projected: its double backward's path, the transform, then the projection)
    result = project_transformed_rows(z, mask, kind, lam, algorithm, _gaps_projected)
    return None if result is None else _restored(*result, dim, last, return_info, out_dtype)


def _inverse_one_minus(lam: Parameter) -> Parameter:
    if isinstance(lam, torch.Tensor):  # (1.0 / t is a reciprocal and a product)
        return torch.reciprocal(1.0 - lam)
    return 1.0 / (1.0 - lam)


def _slice_max(z: torch.Tensor, dim: int) -> torch.Tensor:
    """``z.amax(dim, keepdim=True)``, and -inf on an empty slice (amax has no identity).

    NaN where the slice holds one, as torch's ``amax`` gives it; an exported program says
    so itself, since ONNX Runtime's ReduceMax skips NaN (hardmax of ``[1, NaN, 2, 3]`` would
    come out ``[0, 0, 0, 1]``). An exported program takes slices of any size, 0 too,
    which a branch on the size would not see: it appends the identity, a -inf entry."""
    empty = z.size(dim) == 0  # (size(), not shape[]: a dim out of range is torch's IndexError)
    shape = list(z.shape)
    shape[dim] = 1
    if exporting():
        padded = torch.cat((z, z.new_full(shape, -math.inf)), dim)
        top = padded.amax(dim, keepdim=True)
        return torch.where(torch.isnan(z).any(dim, keepdim=True), math.nan, top)
    if empty:
        return z.new_full(shape, -math.inf)
    return z.amax(dim, keepdim=True)


@_typed(_Plain)
@accepts_numpy
def sparsemax(
    x: torch.Tensor,
    dim: int = -1,
    *,
    mask: torch.Tensor | None = None,
    algorithm: str = "auto",
    return_info: bool = False,
) -> Output:
    r"""Sparsemax (Martins & Astudillo 2016): the Euclidean projection onto the simplex.

    $$
    \operatorname{sparsemax}(z) = \operatorname*{argmin}_{p\in\Delta}\lVert p-z\rVert^2
    = [z - \tau(z)]_+,\quad \textstyle\sum_j [z_j-\tau]_+ = 1.
    $$

    Piecewise linear, 1-Lipschitz, translation invariant, exact zeros. The
    backward pass is O(K): ``Jᵀv = s ⊙ (v − mean_{j∈S} v_j)``.

    Parameters
    ----------
    x : Tensor or ndarray
        Scores, floating point.
    dim : int
        The dimension that is normalised.
    mask : bool Tensor or ndarray, optional
        True = keep. Broadcastable to ``x``.
    algorithm : {"auto", "sort", "michelot", "compiled", "triton"}
        Threshold algorithm; all are exact and agree to rounding.
    return_info : bool
        Also return the threshold ``τ`` and the support size per slice.

    Returns
    -------
    Tensor or ndarray, or ProjectionResult
        Same shape and dtype as ``x``. See the module docstring for NaN/±inf.
    """
    z, dtype, mask, dim = _inputs(x, mask, dim, "sparsemax", algorithm)
    return _project(z, dim, mask, None, algorithm, return_info, dtype)


@_typed(_WithG)
@accepts_numpy
def sparsegen(
    x: torch.Tensor,
    g: Callable[[torch.Tensor], torch.Tensor],
    *,
    lam: Parameter = 0.0,
    dim: int = -1,
    mask: torch.Tensor | None = None,
    algorithm: str = "auto",
    return_info: bool = False,
) -> Output:
    r"""Generic sparsegen (Laha et al. 2018) with a transform ``g``.

    $$
    \operatorname{sparsegen}(z; g, \lambda)
    = \operatorname*{argmin}_{p\in\Delta}\lVert p-g(z)\rVert^2-\lambda\lVert p\rVert^2
    = \operatorname{sparsemax}\!\big(g(z)/(1-\lambda)\big),\quad \lambda<1.
    $$

    Parameters
    ----------
    g : callable
        Maps the (float32 or float64) score tensor to a tensor of the same
        shape; usually elementwise. Gradients flow through it.
    lam : float or Tensor
        ``λ < 1`` (``ValueError`` otherwise). Larger is sparser. A tensor
        holds one value per slice (size 1 along ``dim``) and may require grad.

    Notes
    -----
    The other parameters are those of :func:`sparsemax`. Masked entries are
    filled after ``g``, so ``g`` sees them but they get exactly 0.
    """
    if not callable(g):
        raise TypeError(f"sparsegen: g must be callable (scores → scores); got {type(g).__name__}")
    z, dtype, mask, dim = _inputs(x, mask, dim, "sparsegen")
    lam = slice_lam(lam, z, dim, "sparsegen")
    scores = g(z)
    if not isinstance(scores, torch.Tensor) or scores.shape != z.shape:
        raise ValueError("sparsegen: g must return a tensor of the input's shape")
    if not scores.is_floating_point():
        raise TypeError(f"sparsegen: g must return floating-point scores; got {scores.dtype}")
    scores = in_layout(scores, z)  # whatever layout g gives, the output takes the input's
    return _project(scores, dim, mask, _inverse_one_minus(lam), algorithm, return_info, dtype)


@_typed(_WithLam)
@accepts_numpy
def sparsegen_lin(
    x: torch.Tensor,
    *,
    lam: Parameter = 0.0,
    dim: int = -1,
    mask: torch.Tensor | None = None,
    algorithm: str = "auto",
    return_info: bool = False,
) -> Output:
    r"""Sparsegen-lin: sparsemax of the scores scaled by ``1/(1-λ)``.

    $$
    \mathrm{sparsegen\_lin}(z;\lambda) = \mathrm{sparsemax}\big(z/(1-\lambda)\big)
    $$

    ``λ = 0`` is sparsemax; ``λ → 1⁻`` tends to hardmax (sparser), ``λ → −∞``
    to the uniform distribution. Lipschitz constant ``1/(1-λ)``; translation
    invariant; idempotent only at ``λ = 0``. The scale is fused into the
    projection (applied to max-shifted scores, so a large ``1/(1-λ)`` does
    not overflow float16/float32 scores).
    ``lam`` as in :func:`sparsegen`; other parameters as in :func:`sparsemax`.
    """
    z, dtype, mask, dim = _inputs(x, mask, dim, "sparsegen_lin", algorithm)
    in_kernel = parameter_in_kernel(z, lam, mask, algorithm)  # (1/(1 − λ) computed there)
    lam = slice_lam(lam, z, dim, "sparsegen_lin", in_kernel)
    if in_kernel:
        return _lin_projected(z, dim, mask, lam, return_info, dtype)
    return _project(z, dim, mask, _inverse_one_minus(lam), algorithm, return_info, dtype)


def _lin_projected(z, dim, mask, lam, return_info, out_dtype):
    """Sparsegen-lin of a tensor λ by the Triton kernels, which compute its scale
    (:func:`sparsegen._ops.project_lin`)."""
    z, mask, lam, last = _along_last(z, dim, mask, lam)
    return _restored(*project_lin(z, lam, mask), dim, last, return_info, out_dtype)


def _gap_scale(log_scale: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
    """``exp(log_scale)``, the scale that the projection applies to ``gap``.

    ``gap ≤ 0`` is ``g(z) − max g(z)`` divided by this scale: sparsemax is
    translation invariant, so projecting ``scale · gap`` equals projecting
    ``g(z)/(1-λ)``, but it never overflows. The projection applies the scale
    to the gap below the slice's maximum (0 here), so the maxima stay exactly 0
    and far-below entries go to -inf (output 0) in its own passes.
    """
    # Capped at the dtype's largest value (the limit is the same): an inf would
    # turn the zero gradients of entries off the support into 0 · inf.
    return torch.exp(log_scale).clamp(max=torch.finfo(gap.dtype).max)


def _finite_or(value: torch.Tensor, fallback: float) -> torch.Tensor:
    return torch.where(torch.isfinite(value), value, fallback)


def _gaps(
    formula: Callable[[torch.Tensor], torch.Tensor], kept: torch.Tensor, infinite_top: torch.Tensor
) -> torch.Tensor:
    """``formula(kept)``, the transform's gaps. In a slice whose top is +inf
    (``infinite_top``) every finite score's gap is −1, its limit under an infinite top,
    and the +inf entries' +inf: they share the mass (the README's +inf rule), however far
    the formula of a finite score would overflow. Such entries, and a +inf entry of any
    slice, pass no gradient: the mass split is constant there (and the formula's own
    derivative is inf · 0), so the formula runs on 0 in their place."""
    frozen_at = infinite_top | (kept == math.inf)
    gap = formula(torch.where(frozen_at, 0.0, kept))
    return torch.where(frozen_at, torch.where(kept == math.inf, math.inf, -1.0), gap)


@_typed(_WithLam)
@accepts_numpy
def sparsegen_exp(
    x: torch.Tensor,
    *,
    lam: Parameter = 0.0,
    dim: int = -1,
    mask: torch.Tensor | None = None,
    algorithm: str = "auto",
    return_info: bool = False,
) -> Output:
    r"""Sparsegen-exp: sparsegen with ``g(z) = exp(z)``.

    $$
    \mathrm{sparsegen\_exp}(z;\lambda) = \mathrm{sparsemax}\big(e^{z}/(1-\lambda)\big)
    $$

    Equals softmax when ``λ = 1 − Σ_j e^{z_j}``. Not translation invariant.
    Computed as ``sparsemax(e^{M}(e^{z−M} − 1)/(1−λ))`` with ``M = max z``,
    which is the same point by translation invariance but cannot overflow:
    large scores give the exact limit instead of ``inf``. The reported
    threshold is therefore that of the shifted scores ``(e^z − e^M)/(1−λ)``:
    ``e^M/(1−λ)`` less than that of ``e^z/(1−λ)`` (``M`` taken as 0 in a slice with no
    finite maximum: only ``-inf``, or a ``+inf``).
    ``lam`` as in :func:`sparsegen`; other parameters as in :func:`sparsemax`.
    """
    return _gap_mapping(x, lam, dim, mask, algorithm, return_info, "exp_gap", "sparsegen_exp")


def _exp_gaps(z: torch.Tensor, dim: int, mask: torch.Tensor | None):
    """Sparsegen-exp's ``(gaps, top)`` by torch's formulas."""
    kept = fill_masked(z, mask, -math.inf)
    peak = _slice_max(kept, dim).detach()  # see _TransformFunction
    top = _finite_or(peak, 0.0)
    return _gaps(lambda t: torch.expm1(t - top), kept, peak == math.inf), top


@_typed(_WithLam)
@accepts_numpy
def sparsegen_sq(
    x: torch.Tensor,
    *,
    lam: Parameter = 0.0,
    dim: int = -1,
    mask: torch.Tensor | None = None,
    algorithm: str = "auto",
    return_info: bool = False,
) -> Output:
    r"""Sparsegen-sq: sparsegen with ``g(z) = z²``.

    $$
    \mathrm{sparsegen\_sq}(z;\lambda) = \mathrm{sparsemax}\big(z^2/(1-\lambda)\big)
    $$

    Equals spherical softmax when ``λ = 1 − Σ_j z_j²``. Not monotonic
    (``−3`` outranks ``1``). Computed as ``sparsemax(M²((z/M)² − 1)/(1−λ))``
    with ``M = max |z|`` so that huge scores cannot overflow, the gap as
    ``((|z| − M)/M)(|z|/M + 1)`` so that it keeps its precision near the top
    (float32 scores near 1000 agree with a float64 computation); the reported
    threshold is that of these shifted scores ``(z² − M²)/(1−λ)``: ``M²/(1−λ)``
    less than that of ``z²/(1−λ)`` (``M`` taken as 1 in a slice of zeros, or with an
    infinite score).
    ``lam`` as in :func:`sparsegen`; other parameters as in :func:`sparsemax`.
    """
    return _gap_mapping(x, lam, dim, mask, algorithm, return_info, "square_gap", "sparsegen_sq")


def _square_gaps(z: torch.Tensor, dim: int, mask: torch.Tensor | None):
    """Sparsegen-sq's ``(gaps, top)`` by torch's formulas."""
    magnitude = fill_masked(z, mask, 0.0).abs()
    peak = _slice_max(magnitude, dim).detach()  # see _TransformFunction
    top = torch.where(torch.isfinite(peak) & (peak > 0), peak, 1.0)
    # (z/M)² − 1 factored: |z| − M is exact near the top, where the support is,
    # so the gap keeps its relative precision (the squared ratio minus 1 would not)
    return _gaps(lambda m: (m - top) / top * (m / top + 1), magnitude, peak == math.inf), top


# Each gap transform's torch formulas, by its kind.
_TORCH_GAPS = {"exp_gap": _exp_gaps, "square_gap": _square_gaps}


def _gaps_projected(z, dim, mask, kind, lam, algorithm, return_info, dtype):
    """Sparsegen-exp's or -sq's output (``kind``) of checked arguments: the transform (a
    kernel's pass, or torch's formulas), then the projection with the gaps' scale
    ``e^top/(1 − λ)`` or ``top²/(1 − λ)``."""
    compiled = _transform_by_kernel(z, dim, mask, kind, algorithm)
    if compiled is None:
        z = z.to(compute_dtype(z.dtype))  # torch's formulas, in the kernels' compute dtype
        gap, top = _TORCH_GAPS[kind](z, dim, mask)
        gap = in_layout(gap, z)  # (broadcast ops may pick another layout)
    else:
        gap, top = compiled
    log_top = top if kind == "exp_gap" else 2 * torch.log(top)
    log_scale = log_top - log_one_minus(lam, top)
    return _project(gap, dim, mask, _gap_scale(log_scale, gap), algorithm, return_info, dtype)


def _gap_mapping(x, lam, dim, mask, algorithm, return_info, kind, name):
    """Sparsegen-exp's or -sq's body (``kind``): projected straight from the scores where a
    kernel can (:func:`_projected_from_scores`), else the transform, then the projection."""
    z, dtype, mask, dim = _inputs(x, mask, dim, name, algorithm)
    lam = slice_lam(lam, z, dim, name)
    args = (z, dim, mask, kind, lam, algorithm, return_info, dtype)
    if (projected := _projected_from_scores(*args)) is not None:
        return projected
    return _gaps_projected(z, dim, mask, kind, lam, algorithm, return_info, dtype)


def _compiled_q(q: Parameter, z: torch.Tensor) -> Parameter:
    """The fused scale's q; under ``torch.compile``, a number as a 0-d float64 tensor: the
    operator takes a number as a constant of the graph, guarded to its value (each new q
    recompiled, and past torch's recompile limit, ran uncompiled), a tensor as an input.
    The kernels compute ``Kq`` in float64 either way."""
    if isinstance(q, float) and torch.compiler.is_compiling():
        return number_tensor(q, torch.float64, z.device)
    return q


def _cone_projected(z, q, mirror, dim, mask, algorithm, return_info, out_dtype, in_kernel):
    """Sparsecone (``mirror``: sparsehourglass) with α computed in the projection, or None
    where torch computes it: by the Triton kernels for a tensor q that goes to them as it
    is, or sum-normalization++'s q = 0 (``in_kernel``, :func:`sparsegen._ops.project_cone`:
    their gradients too), else by the operator where :func:`_scale_in_projection` says."""
    if in_kernel:
        z, mask, q, last = _along_last(z, dim, mask, q)
        return _restored(*project_cone(z, q, mirror, mask), dim, last, return_info, out_dtype)
    if not _scale_in_projection(q, z):
        return None
    scale = ConeScale(_compiled_q(q, z), mirror)
    return _project(z, dim, mask, scale, algorithm, return_info, out_dtype)


def _scale_in_projection(q: Parameter, z: torch.Tensor) -> bool:
    """Whether sparsecone's/sparsehourglass's scale is computed in the projection
    (:class:`~sparsegen._projection.ConeScale`): for a float ``q > 0``, and for a
    per-slice tensor when nothing asks for a derivative (the projection gives none to q,
    and at q = 0 the torch path cuts the degenerate slices'). A transform, forward-mode
    AD or a tracer may ask without ``requires_grad`` saying so (a ``jvp`` tangent, a
    vmapped parameter, a trace checked against a second run): those take the torch path,
    as ``torch.export`` does (its program is plain torch ops, which autograd differentiates
    when it is trained: the torch path cuts the slices whose scale's derivative overflows)."""
    if exporting():
        return False
    if isinstance(q, float):
        return q > 0
    if torch.is_grad_enabled() and (z.requires_grad or q.requires_grad):
        return False
    return torch.compiler.is_compiling() or plain_eager(z, q)


@_typed(_WithQ)
@accepts_numpy
def sparsecone(
    x: torch.Tensor,
    *,
    q: Parameter = 1.0,
    dim: int = -1,
    mask: torch.Tensor | None = None,
    algorithm: str = "auto",
    return_info: bool = False,
) -> Output:
    r"""Sparsecone (Laha et al. 2018): sparsemax of ``z`` pulled towards the anchor ``(−q,…,−q)``.

    $$
    \operatorname{sparsecone}(z;q) = \operatorname{sparsemax}(\alpha(z)\,z),
    \qquad \alpha(z) = \frac{1+Kq}{\sum_i z_i + Kq}
    $$

    Defined only where ``Σ_i z_i + Kq > 0``: slices outside that domain give
    NaN (documented, not an error, so one bad row does not stop a batch).
    ``q = 0`` is sum-normalisation (for non-negative z), ``q → ∞`` sparsemax.
    ``K`` counts the unmasked entries.

    Parameters
    ----------
    q : float or Tensor
        ``q ≥ 0`` (``ValueError`` otherwise); ``math.inf`` gives sparsemax. A
        tensor holds one value per slice and may require grad.

    Notes
    -----
    Other parameters as in :func:`sparsemax`.
    """
    z, dtype, mask, dim = _inputs(x, mask, dim, "sparsecone", algorithm)
    in_kernel = parameter_in_kernel(z, q, mask, algorithm)
    q = slice_q(q, z, dim, "sparsecone", in_kernel=in_kernel)
    if is_inf(q):
        return _project(z, dim, mask, None, algorithm, return_info, dtype)
    cone = (z, q, False, dim, mask, algorithm, return_info, dtype, in_kernel)
    if (projected := _cone_projected(*cone)) is not None:  # α computed in the projection
        return projected
    z = z.to(compute_dtype(z.dtype))  # torch computes the scale, as the kernels would
    scale = slice_scale(z, q, False, mask, dim)
    # Masked entries are exactly 0, also in a slice outside the domain (NaN).
    return _project(z, dim, mask, scale, algorithm, return_info, dtype)


@_typed(_WithQ)
@accepts_numpy
def sparsehourglass(
    x: torch.Tensor,
    *,
    q: Parameter = 1.0,
    dim: int = -1,
    mask: torch.Tensor | None = None,
    algorithm: str = "auto",
    return_info: bool = False,
) -> Output:
    r"""Sparsehourglass (Laha et al. 2018): sparsecone extended to all of R^K by a mirror.

    $$
    \operatorname{sparsehourglass}(z;q) = \operatorname{sparsemax}(\hat\alpha(z)\,z),
    \qquad \hat\alpha(z) = \frac{1+Kq}{\lvert\sum_i z_i\rvert + Kq}
    $$

    Defined on all of ``R^K``, Lipschitz (the paper's constant ``1 + 1/(Kq)`` does not
    hold in the 2-norm: ``sparsegen properties`` measures more), idempotent, monotonic.
    ``q → ∞`` gives sparsemax (translation invariant), ``q = 0`` gives
    sum-normalization++ (scale invariant). At ``q = 0`` and
    ``Σ z = 0`` the scale is infinite and the output is its limit: the mass
    shared equally by the slice's maxima; that slice passes a zero gradient.
    ``K`` counts the unmasked entries.

    Parameters
    ----------
    q : float or Tensor
        ``q ≥ 0`` (``ValueError`` otherwise); ``math.inf`` gives sparsemax. A
        tensor holds one value per slice and may require grad.

    Notes
    -----
    Other parameters as in :func:`sparsemax`.
    """
    return _hourglass(x, q, dim, mask, algorithm, return_info, "sparsehourglass")


def _hourglass(x, q, dim, mask, algorithm, return_info, name):
    z, dtype, mask, dim = _inputs(x, mask, dim, name, algorithm)
    in_kernel = parameter_in_kernel(z, q, mask, algorithm)
    like, q = z, slice_q(q, z, dim, name, in_kernel=in_kernel)
    if is_inf(q):
        return _project(z, dim, mask, None, algorithm, return_info, dtype)
    if isinstance(q, float) and q == 0:  # (sum-normalization++: its gradient by them too)
        in_kernel = sum_normalization_in_kernel(z, mask, algorithm)
    cone = (z, q, True, dim, mask, algorithm, return_info, dtype, in_kernel)
    if (projected := _cone_projected(*cone)) is not None:  # α̂ computed in the projection
        return projected
    if isinstance(q, float) and q == 0:
        # Scale invariant: divided by max |z| first, so that tiny (subnormal) scores
        # keep their ratios instead of rounding in the sum. Without a gradient to
        # record, one kernel pass (the Triton path's, with one too, was taken above),
        # and α̂ computed in the projection.
        ratio = _transform_by_kernel(z, dim, mask, "ratio", algorithm)
        if ratio is not None:
            scale = ConeScale(0.0, mirror=True)
            return _project(ratio[0], dim, mask, scale, algorithm, return_info, dtype)
        z = z.to(compute_dtype(z.dtype))
        # (of z detached: a step function of z, whose derivative is 0, recording no graph)
        top = _slice_max(fill_masked(z.detach(), mask, 0.0).abs(), dim)
        z = z / _power_of_two_at_most(torch.where((top > 0) & torch.isfinite(top), top, 1.0))
    z = z.to(compute_dtype(z.dtype))  # torch computes the scale, as the kernels would
    # (a division by a slice's value, or a where, may give z another layout than the input)
    z = in_layout(z, like)
    # The degenerate slices (:func:`_cut_degenerate_slices`) are looked for only where a
    # slice's α̂² overflows (α̂ infinite too), which the scales tell at once, where reading
    # them is allowed; elsewhere they are cut whatever the values (the graph, or the
    # device's stream, is then the same for any values)
    q_tensor = (q,) if isinstance(q, torch.Tensor) else ()
    scale = slice_scale(z, q, True, mask, dim) if reads_for_free(z, *q_tensor) else None
    if scale is None or bool(torch.isinf(scale.detach().square()).any()):
        z, q = _cut_degenerate_slices(z, q, mask, dim)
        z = in_layout(z, like)
        scale = slice_scale(z, q, True, mask, dim)
    return _project(z, dim, mask, scale, algorithm, return_info, dtype)


def _power_of_two_at_most(top: torch.Tensor) -> torch.Tensor:
    """A power of two at most ``top`` (positive, finite), as the kernels divide by: scores
    divided by it keep their digits, so that the differences near the top stay exact (by
    ``top`` itself, each rounded once, and the scale ``1/|Σ z/top|`` multiplied those
    roundings by the sum's cancellation). From ``log2``, which ONNX has: one below the
    largest where it rounds up, never past the dtype's range (``log2`` of float64's largest
    value rounds to 1024)."""
    largest = math.frexp(torch.finfo(top.dtype).max)[1] - 1  # 1023, 127
    return torch.exp2(torch.floor(torch.log2(top.double())).clamp(max=largest)).to(top.dtype)


def _cut_degenerate_slices(
    z: torch.Tensor, q: Parameter, mask: torch.Tensor | None, dim: int
) -> tuple[torch.Tensor, Parameter]:
    """``z`` and ``q`` detached in the slices where sparsehourglass's ``α̂`` is infinite, or
    so large that ``∂α̂/∂z = −α̂²/(1 + Kq)`` overflows where the maxima take all the mass.

    Where ``|Σz| + Kq = 0`` the projection caps the scale at the dtype's largest
    value, which gives the limit (the maxima share the mass). In both, the output is
    locally constant: no gradient flows through those slices. They are cut before ``α̂``
    is computed: cut after, the zero gradient would still meet ``∂α̂/∂z``, infinite
    there, and give NaN.
    """
    # a trace records one graph for every grad mode (its check reruns it without grad), and
    # an exported program may be trained though its example inputs took no gradient
    tracing = torch.jit.is_tracing() or exporting()
    cut_q = isinstance(q, torch.Tensor) and (q.requires_grad or tracing)
    if not (z.requires_grad or cut_q or tracing):
        return z, q
    with torch.no_grad():
        scale = slice_scale(z, q, True, mask, dim)
        kept = fill_masked(z, mask, -math.inf)
        top = _slice_max(kept, dim)
        below = _slice_max(torch.where(kept < top, kept, -math.inf), dim)
        # where α̂ is finite but α̂² (the size of ∂α̂/∂z) overflows, and the maxima alone
        # take the mass (no scale moves it: its zero gradient would meet an infinite one,
        # as with a tensor q of 1e-300); NaN slices keep theirs
        alone = scale * (top - below) >= 1
        degenerate = torch.isinf(scale) | (torch.isinf(scale * scale) & alone)
    z = torch.where(degenerate, z.detach(), z)
    return z, torch.where(degenerate, q.detach(), q) if cut_q else q


@_typed(_Plain)
@accepts_numpy
def sum_normalization_pp(
    x: torch.Tensor,
    dim: int = -1,
    *,
    mask: torch.Tensor | None = None,
    algorithm: str = "auto",
    return_info: bool = False,
) -> Output:
    r"""Sum-normalization++ (Laha et al. 2018): sparsehourglass at ``q = 0``.

    $$
    \mathrm{sum\_normalization}^{++}(z) = \mathrm{sparsemax}(z/|\sum_i z_i|)
    $$

    Scale invariant and defined for signed scores (unlike
    :func:`sum_normalization`). A slice summing to 0 gives the limit: the mass
    shared equally by its maxima, and a zero gradient. Parameters as in :func:`sparsemax`.
    """
    return _hourglass(x, 0.0, dim, mask, algorithm, return_info, "sum_normalization_pp")


def _normalize(
    values: torch.Tensor,
    dim: int,
    mask: torch.Tensor | None,
    dtype: torch.dtype,
    like: torch.Tensor,
) -> torch.Tensor:
    """``values / Σ values`` along ``dim``: masked entries 0, a fully masked slice zeros
    (and zero gradients: its 0/0 is never computed), in the layout of the input ``like``
    (which broadcast ops with a mask of another layout may not keep)."""
    if mask is None:
        return in_layout((values / values.sum(dim, keepdim=True)).to(dtype), like)
    values = values.masked_fill(~mask, 0.0)
    alive = mask.expand(values.shape).any(dim, keepdim=True)
    out = values / torch.where(alive, values.sum(dim, keepdim=True), 1.0)
    return in_layout(torch.where(alive & mask, out, 0.0).to(dtype), like)  # (0, not 0/NaN)


@_typed(_Dense)
@accepts_numpy
def sum_normalization(
    x: torch.Tensor, dim: int = -1, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Sum-normalization: ``z_i / Σ_j z_j`` for non-negative scores.

    Scale invariant, not translation invariant, not Lipschitz. Negative
    entries raise ``ValueError`` (the result would not be a distribution; use
    :func:`sum_normalization_pp` for signed scores); on a CUDA tensor their slices
    are NaN instead, so that the call never waits for the device. A slice summing to 0 is
    0/0 and gives NaN, as does a NaN entry. Scores are divided by their
    maximum first, so huge values do not overflow the sum.
    """
    z, dtype, mask, dim = _inputs(x, mask, dim, "sum_normalization")
    kept = z if mask is None else z.masked_fill(~mask, 0.0)
    rule = "sum_normalization: scores must be >= 0; use sum_normalization_pp for signed scores"
    if on_device(kept):  # no wait for the device: such slices are NaN instead
        kept = torch.where((kept < 0).any(dim, keepdim=True), math.nan, kept)
    else:
        check_values(
            ~(kept < 0),
            ValueError,
            lambda: f"{rule} (got a minimum of {plain(kept).min().item()})",
            rule,
        )
    top = _slice_max(kept, dim)
    return _normalize(kept / torch.where(top > 0, top, 1.0), dim, mask, dtype, z)


@_typed(_Dense)
@accepts_numpy
def spherical_softmax(
    x: torch.Tensor, dim: int = -1, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Spherical softmax: ``z_i² / Σ_j z_j²``.

    Scale invariant; neither monotonic (``−3`` outranks ``1``) nor
    translation invariant nor Lipschitz. At ``z = 0`` it is 0/0 and gives
    NaN. Scores are divided by ``max |z|`` first, so squares cannot overflow.
    """
    z, dtype, mask, dim = _inputs(x, mask, dim, "spherical_softmax")
    kept = z if mask is None else z.masked_fill(~mask, 0.0)
    top = _slice_max(kept.abs(), dim)
    return _normalize((kept / torch.where(top > 0, top, 1.0)) ** 2, dim, mask, dtype, z)


def _with_dead_slices_zeroed(out: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    return torch.where(top == -math.inf, 0.0, out)


def _masked_zero(out: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``out`` with exactly 0 at masked entries, in a NaN slice too (NaN spreads over it)."""
    return out if mask is None else out.masked_fill(~mask, 0.0)


@_typed(_Softmax)
@accepts_numpy
def softmax(
    x: torch.Tensor,
    dim: int = -1,
    dtype: torch.dtype | None = None,
    *,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Softmax ``exp(z_i) / Σ_j exp(z_j)`` (``torch.softmax``), with the library's conventions.

    Differences from ``torch.softmax``: a slice of ``-inf`` only (or fully
    masked) gives zeros instead of NaN, and ``+inf`` scores share the mass
    equally (the limit) instead of giving NaN. ``dtype``, as in
    ``torch.nn.functional.softmax``: the input is cast to it first (e.g. float16
    scores computed and returned in float32); third, as in ``torch.softmax(x, dim, dtype)``.
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"softmax: dtype must be a floating-point torch.dtype; got {dtype}")
    if dtype is not None and isinstance(x, torch.Tensor):
        x = x.to(dtype)
    z, dtype, mask, dim = _inputs(x, mask, dim, "softmax")
    z = fill_masked(z, mask, -math.inf)
    if reads_for_free(z) and z.size(dim) > 0:
        out = torch.softmax(z, dim)  # masked entries: exp(-inf) = 0
        # Where a slice's maximum is ±inf or NaN, torch's softmax is NaN throughout (a sum
        # of exp(inf − inf) or exp(−inf + inf)): its first entry says which way to go.
        if not bool(out.select(dim, 0).isnan().any()):
            return out.to(dtype)
    top = _slice_max(z, dim)
    infinite = top == math.inf
    # Slices of +inf or only -inf are computed apart: torch.softmax would give NaN
    # there, and its backward would carry the NaN upstream.
    out = torch.softmax(torch.where(infinite | (top == -math.inf), 0.0, z), dim)
    winners = (z == math.inf).to(z.dtype)  # (not isposinf: ONNX exports it through float32)
    out = torch.where(infinite, winners / winners.sum(dim, keepdim=True), out)
    return _masked_zero(_with_dead_slices_zeroed(out, top), mask).to(dtype)


@_typed(_Dense)
@accepts_numpy
def hardmax(x: torch.Tensor, dim: int = -1, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""Hardmax: all the mass on the argmax; tied maxima share it equally.

    $$
    \operatorname{hardmax}(z)_i = \frac{[z_i = \max_j z_j]}{\#\{j : z_j = \max_k z_k\}}
    $$

    The limit of ``sparsegen_lin`` as ``λ → 1⁻``. Piecewise constant, so it
    passes no gradient. NaN gives a NaN slice; ``-inf`` only gives zeros.
    """
    z, dtype, mask, dim = _inputs(x, mask, dim, "hardmax")
    if mask is not None:
        z = z.masked_fill(~mask, -math.inf)
    top = _slice_max(z, dim)
    at_top = (z == top).to(z.dtype)
    out = at_top / at_top.sum(dim, keepdim=True)
    out = torch.where(torch.isnan(top), math.nan, out)
    return _masked_zero(_with_dead_slices_zeroed(out, top), mask).detach().to(dtype)
