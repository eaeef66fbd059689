r"""Explicit Jacobian matrices, for inspection and tests (never needed for backprop).

Shapes: the input's dimensions other than ``dim``, in order, followed by ``(K, K)``;
entry ``[..., i, j]`` is ``∂ρ_i/∂z_j``. A slice that the mapping makes NaN has a NaN
Jacobian; the input's dtype (half types computed in float32) and NumPy arrays in give
the same out, as for the mappings.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch

from sparsegen._ops import exporting
from sparsegen._projection import cone_scale
from sparsegen._validation import (
    Parameter,
    accepts_numpy,
    check_dim,
    check_input,
    check_lam,
    check_q,
)
from sparsegen.functional import sparsegen, sparsegen_exp, sparsegen_sq, sparsehourglass, sparsemax

__all__ = ["sparsegen_jacobian", "sparsehourglass_jacobian", "sparsemax_jacobian"]


def _support_jacobian(p: torch.Tensor) -> torch.Tensor:
    """``Diag(s) − s sᵀ/|S|`` for the support ``S`` of a mapping's output ``p`` (last
    dimension); NaN for a slice where ``p`` is NaN."""
    p = p.detach()
    s = (p > 0).to(p.dtype)
    size = s.sum(-1, keepdim=True).clamp(min=1).unsqueeze(-1)
    jacobian = torch.diag_embed(s) - s.unsqueeze(-1) * s.unsqueeze(-2) / size
    return torch.where(p.isnan().any(-1)[..., None, None], torch.nan, jacobian)


def _projection_jacobian(scores: torch.Tensor) -> torch.Tensor:
    """``Diag(s) − s sᵀ/|S|`` of sparsemax at ``scores`` (last dimension)."""
    return _support_jacobian(sparsemax(scores.detach(), dim=-1))


# g whose sparsegen has an overflow-free form: g(z) itself overflows (exp of a float32
# score above 88.7), ties the overflowed entries at inf and gives a wrong support
_OVERFLOW_FREE: dict[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] = {
    torch.exp: sparsegen_exp,
    torch.square: sparsegen_sq,
}


def _sparsegen_output(
    z: torch.Tensor, g: Callable[[torch.Tensor], torch.Tensor], lam: float
) -> torch.Tensor:
    """The mapping's output, whose support the Jacobian has."""
    form = _OVERFLOW_FREE.get(g) if isinstance(g, Hashable) else None
    return form(z, lam=lam) if form is not None else sparsegen(z, g, lam=lam)


def _number(value: Parameter, name: str, symbol: str, fn: str) -> float:
    """``lam`` or ``q`` checked as the mapping checks it, as a python float: one value for
    every slice (``TypeError`` for a tensor of several)."""
    value = (check_lam if name == "lam" else check_q)(value, fn)
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise TypeError(
            f"{fn}: {name} must be a number (one {symbol} for every slice); got a "
            f"tensor of shape {tuple(value.shape)}"
        )
    return float(value)


@accepts_numpy
def sparsemax_jacobian(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    r"""Jacobian of sparsemax (Martins & Astudillo 2016, §2.5).

    $$
    J_{\mathrm{sparsemax}}(z) = \operatorname{Diag}(s) - \frac{s s^\top}{|S(z)|}
    $$

    with ``s`` the 0/1 indicator of the support ``S(z)``.
    """
    z, dtype = check_input(x, "sparsemax_jacobian")
    dim = check_dim(dim, "sparsemax_jacobian")
    return _projection_jacobian(z.movedim(dim, -1)).to(dtype)


@accepts_numpy
def sparsegen_jacobian(
    x: torch.Tensor,
    g: Callable[[torch.Tensor], torch.Tensor],
    *,
    lam: Parameter = 0.0,
    dim: int = -1,
) -> torch.Tensor:
    r"""Jacobian of sparsegen with an elementwise ``g`` (Laha et al. 2018, Eq. 3).

    $$
    J_{\mathrm{sparsegen}}(z) = J_{\mathrm{sparsemax}}\!\big(g(z)/(1-\lambda)\big)\,
    \frac{\operatorname{Diag}(g'(z))}{1-\lambda}
    $$

    ``g'`` is obtained by autograd, which is exact for elementwise ``g`` (one whose
    Jacobian is diagonal). For another ``g`` (a softmax, a normalisation) the result is
    wrong, and nothing says so: take ``torch.func.jacrev`` of :func:`sparsegen.sparsegen`
    instead. The support
    is the mapping's: ``sparsegen_exp``'s and ``sparsegen_sq``'s overflow-free forms
    for ``g = torch.exp`` and ``torch.square``, so that scores whose ``g`` overflows
    (``exp`` of a float32 score above 88.7) get the Jacobian of what the mapping
    returns. Entries off the support are 0 even where ``g'`` is infinite; on the support
    ``g'(z)/(1 − λ)`` is taken as it is, inf where ``g'`` overflows (``e^z`` of a float32
    score above 88.7), though the mapping's own gradient may fit.
    ``lam`` must be a number here (``TypeError`` for a tensor of several).
    """
    z, dtype = check_input(x, "sparsegen_jacobian")
    lam = _number(lam, "lam", "λ", "sparsegen_jacobian")
    z = z.movedim(check_dim(dim, "sparsegen_jacobian"), -1).detach()
    inner = _support_jacobian(_sparsegen_output(z, g, lam))
    slope = _elementwise_slope(g, z)
    # 0 where the support says so, not 0 · g'(z): g' may overflow where g does
    return torch.where(inner == 0, 0.0, inner * slope.unsqueeze(-2) / (1 - lam)).to(dtype)


def _elementwise_slope(g: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """``g'(z)`` for an elementwise ``g``: by autograd, or where ``torch.export`` traces (which
    cannot trace ``autograd.grad`` through most ops) by forward mode, ``J·1`` being the
    diagonal for an elementwise ``g``."""
    if exporting():
        return torch.func.jvp(g, (z,), (torch.ones_like(z),))[1]
    z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        out = g(z)
        if not out.requires_grad:  # a constant g (zeros_like, a detached table): g' = 0
            return torch.zeros_like(z)
        return torch.autograd.grad(out.sum(), z)[0]


@accepts_numpy
def sparsehourglass_jacobian(x: torch.Tensor, *, q: Parameter = 1.0, dim: int = -1) -> torch.Tensor:
    r"""Jacobian of sparsehourglass, by the chain rule through ``g(z) = α̂(z) z``.

    $$
    J(z) = J_{\mathrm{sm}}(\hat\alpha z)\,(\hat\alpha I + z\,\nabla\hat\alpha^\top),
    \quad \nabla\hat\alpha = -\frac{(1+Kq)\operatorname{sign}(\sum_i z_i)}
    {(\lvert\sum_i z_i\rvert + Kq)^2}\,\mathbf 1
    $$

    (where ``Σ z = 0`` the one-sided slopes differ; ``sign(0) = 0`` is used). At ``q = inf``
    sparsemax's; at ``q = 0`` (sum-normalization++) a slice summing to 0 has the zero
    Jacobian its gradient has (the mapping's limit is locally constant, or is taken so).
    The support is that of the mapping's output. ``z ∇α̂ᵀ`` is computed as
    ``−α̂ sign(Σz) (z/(|Σz| + Kq)) 1ᵀ``, which stays finite where the square of a tiny
    ``|Σz| + Kq`` would underflow; only the support's rows of it count, so a ``-inf``
    score off the support meets no product (where ``Σz = −inf``, ``α̂ = 0`` and the
    mapping is locally constant: the Jacobian is 0, as where ``+inf`` scores share the
    mass). Where ``α̂`` itself overflows (a subnormal ``Σz`` at a subnormal ``q``, or
    ``q = 0``) its entries may be inf or NaN.
    """
    z, dtype = check_input(x, "sparsehourglass_jacobian")
    q = _number(q, "q", "q", "sparsehourglass_jacobian")
    z = z.movedim(check_dim(dim, "sparsehourglass_jacobian"), -1)
    if q == torch.inf:
        return _projection_jacobian(z).to(dtype)
    output = sparsehourglass(z.detach(), q=q)
    inner = _support_jacobian(output)
    k = z.shape[-1]
    total = z.sum(-1, keepdim=True)
    denom = total.abs() + k * q
    alpha = cone_scale(total, k, q, mirror=True)
    on_support = torch.where(inner.diagonal(dim1=-2, dim2=-1) > 0, z, 0.0)
    ratio = torch.sign(total) * on_support / denom  # (z ∇α̂ᵀ = −α̂ · ratio 1ᵀ)
    eye = torch.eye(k, dtype=z.dtype, device=z.device)
    transform = alpha.unsqueeze(-1) * (eye - ratio.unsqueeze(-1))
    jacobian = inner @ transform
    # 0 where the mapping takes its limit: Σz = 0 at q = 0, or an infinite score (+inf ones
    # share the mass, or Σz = -inf makes α̂ = 0), a slice the mapping holds constant
    infinite = torch.isinf(z).any(-1, keepdim=True) & torch.isfinite(output).all(-1, keepdim=True)
    constant = (denom == 0) | infinite
    return torch.where(constant.unsqueeze(-1), 0.0, jacobian).to(dtype)
