r"""Explicit Jacobian matrices, for inspection and tests (never needed for backprop).

Shapes: the input's dimensions other than ``dim``, in order, followed by ``(K, K)``;
entry ``[..., i, j]`` is ``∂ρ_i/∂z_j``. A slice that the mapping makes NaN has a NaN
Jacobian; NumPy arrays in give NumPy arrays out, as for the mappings.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sparsegen._validation import Parameter, accepts_numpy, check_input, check_lam, check_q
from sparsegen.functional import sparsemax

__all__ = ["sparsegen_jacobian", "sparsehourglass_jacobian", "sparsemax_jacobian"]


def _projection_jacobian(scores: torch.Tensor) -> torch.Tensor:
    """``Diag(s) − s sᵀ/|S|`` of sparsemax at ``scores`` (last dimension)."""
    p = sparsemax(scores.detach(), dim=-1)
    s = (p > 0).to(scores.dtype)
    size = s.sum(-1, keepdim=True).clamp(min=1).unsqueeze(-1)
    jacobian = torch.diag_embed(s) - s.unsqueeze(-1) * s.unsqueeze(-2) / size
    return torch.where(p.isnan().any(-1)[..., None, None], torch.nan, jacobian)


@accepts_numpy
def sparsemax_jacobian(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    r"""Jacobian of sparsemax (Martins & Astudillo 2016, §2.5).

    $$
    J_{\mathrm{sparsemax}}(z) = \operatorname{Diag}(s) - \frac{s s^\top}{|S(z)|}
    $$

    with ``s`` the 0/1 indicator of the support ``S(z)``.
    """
    z, _ = check_input(x, "sparsemax_jacobian")
    return _projection_jacobian(z.movedim(dim, -1))


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

    ``g'`` is obtained by autograd, which is exact for elementwise ``g``.
    ``lam`` must be a number here.
    """
    z, _ = check_input(x, "sparsegen_jacobian")
    lam = float(check_lam(lam, "sparsegen_jacobian"))
    z = z.movedim(dim, -1).detach().requires_grad_(True)
    with torch.enable_grad():
        gz = g(z)
        (slope,) = torch.autograd.grad(gz.sum(), z)
    inner = _projection_jacobian(gz.detach() / (1 - lam))
    return inner * slope.unsqueeze(-2) / (1 - lam)


@accepts_numpy
def sparsehourglass_jacobian(x: torch.Tensor, *, q: float = 1.0, dim: int = -1) -> torch.Tensor:
    r"""Jacobian of sparsehourglass, by the chain rule through ``g(z) = α̂(z) z``.

    $$
    J(z) = J_{\mathrm{sm}}(\hat\alpha z)\,(\hat\alpha I + z\,\nabla\hat\alpha^\top),
    \quad \nabla\hat\alpha = -\frac{(1+Kq)\operatorname{sign}(\sum_i z_i)}
    {(\lvert\sum_i z_i\rvert + Kq)^2}\,\mathbf 1
    $$

    (where ``Σ z = 0`` the one-sided slopes differ; ``sign(0) = 0`` is used). At ``q = inf``
    sparsemax's; at ``q = 0`` (sum-normalization++) a slice summing to 0 has the zero
    Jacobian its gradient has (the mapping's limit is locally constant, or is taken so).
    """
    z, _ = check_input(x, "sparsehourglass_jacobian")
    q = float(check_q(q, "sparsehourglass_jacobian"))
    z = z.movedim(dim, -1)
    if q == torch.inf:
        return _projection_jacobian(z)
    k = z.shape[-1]
    total = z.sum(-1, keepdim=True)
    denom = total.abs() + k * q
    alpha = (1 + k * q) / denom
    d_alpha = -(1 + k * q) * torch.sign(total) / denom**2
    eye = torch.eye(k, dtype=z.dtype, device=z.device)
    transform = alpha.unsqueeze(-1) * eye + z.unsqueeze(-1) * d_alpha.unsqueeze(-1)
    jacobian = _projection_jacobian(alpha * z) @ transform
    return torch.where((denom == 0).unsqueeze(-1), 0.0, jacobian)
