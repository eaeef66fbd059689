"""Modules for the probability mappings: thin wrappers over :mod:`sparsegen.functional`.

Each module's ``forward(x, mask=None)`` calls its function along ``self.dim``.
Parameterised mappings take ``learnable=True`` to make their parameter an
``nn.Parameter``, stored unconstrained so that training can never leave the
valid range:

* ``lam = 1 − exp(ρ)`` with ``ρ = log(1 − lam)`` learnt (``lam < 1`` always);
* ``q = exp(θ)`` with ``θ = log q`` learnt (``q > 0`` always; a learnable ``q``
  must start > 0).

The current value is always readable as ``module.lam`` / ``module.q``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from sparsegen import functional as F
from sparsegen._validation import check_lam, check_q


class _Mapping(nn.Module):
    function: Callable[..., torch.Tensor]

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return type(self).function(x, dim=self.dim, mask=mask)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Softmax(_Mapping):
    """Module form of :func:`sparsegen.softmax`."""

    function = staticmethod(F.softmax)


class Hardmax(_Mapping):
    """Module form of :func:`sparsegen.hardmax`."""

    function = staticmethod(F.hardmax)


class SumNormalization(_Mapping):
    """Module form of :func:`sparsegen.sum_normalization`."""

    function = staticmethod(F.sum_normalization)


class SphericalSoftmax(_Mapping):
    """Module form of :func:`sparsegen.spherical_softmax`."""

    function = staticmethod(F.spherical_softmax)


class Sparsemax(_Mapping):
    """Module form of :func:`sparsegen.sparsemax`."""

    function = staticmethod(F.sparsemax)


class SumNormalizationPP(_Mapping):
    """Module form of :func:`sparsegen.sum_normalization_pp`."""

    function = staticmethod(F.sum_normalization_pp)


class _LamMapping(_Mapping):
    def __init__(self, lam: float = 0.0, dim: int = -1, learnable: bool = False) -> None:
        super().__init__(dim)
        log_gap = torch.tensor(math.log1p(-float(check_lam(lam, type(self).__name__))))
        self.learnable = learnable
        if learnable:
            self.log_one_minus_lam = nn.Parameter(log_gap)
        else:
            self.register_buffer("log_one_minus_lam", log_gap)

    @property
    def lam(self) -> torch.Tensor:
        """``λ = 1 − exp(ρ)``; always < 1."""
        return -torch.expm1(self.log_one_minus_lam)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return type(self).function(x, self.lam, dim=self.dim, mask=mask)

    def extra_repr(self) -> str:
        return f"lam={self.lam.item():.4g}, dim={self.dim}, learnable={self.learnable}"


class SparsegenLin(_LamMapping):
    """Module form of :func:`sparsegen.sparsegen_lin` (learnable ``lam`` optional)."""

    function = staticmethod(F.sparsegen_lin)


class SparsegenExp(_LamMapping):
    """Module form of :func:`sparsegen.sparsegen_exp` (learnable ``lam`` optional)."""

    function = staticmethod(F.sparsegen_exp)


class SparsegenSq(_LamMapping):
    """Module form of :func:`sparsegen.sparsegen_sq` (learnable ``lam`` optional)."""

    function = staticmethod(F.sparsegen_sq)


class _QMapping(_Mapping):
    def __init__(self, q: float = 1.0, dim: int = -1, learnable: bool = False) -> None:
        super().__init__(dim)
        q = float(check_q(q, type(self).__name__))
        if learnable and not 0 < q < math.inf:
            raise ValueError(f"{type(self).__name__}: a learnable q must start finite and > 0")
        self.learnable = learnable
        if learnable:
            self.log_q = nn.Parameter(torch.tensor(math.log(q)))
        else:
            self.fixed_q = q

    @property
    def q(self) -> torch.Tensor | float:
        """``q = exp(θ)`` when learnable (always > 0), else the fixed number."""
        return self.log_q.exp() if self.learnable else self.fixed_q

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return type(self).function(x, self.q, dim=self.dim, mask=mask)

    def extra_repr(self) -> str:
        q = float(self.q.detach()) if self.learnable else self.fixed_q
        return f"q={q:.4g}, dim={self.dim}, learnable={self.learnable}"


class SparseCone(_QMapping):
    """Module form of :func:`sparsegen.sparsecone` (learnable ``q`` optional)."""

    function = staticmethod(F.sparsecone)


class SparseHourglass(_QMapping):
    """Module form of :func:`sparsegen.sparsehourglass` (learnable ``q`` optional)."""

    function = staticmethod(F.sparsehourglass)
