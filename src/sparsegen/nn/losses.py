"""Loss modules: thin wrappers over :mod:`sparsegen.losses`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsegen import losses
from sparsegen.nn import _deprecated
from sparsegen.nn._scripting import NotScriptable


class _Loss(NotScriptable, nn.Module):
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class SoftmaxLoss(_Loss):
    """Module form of :func:`sparsegen.losses.softmax_loss`."""

    def forward(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return losses.softmax_loss(z, target, self.reduction)


class LogisticLoss(_Loss):
    """Module form of :func:`sparsegen.losses.logistic_loss`."""

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return losses.logistic_loss(z, y, self.reduction)


class SparsemaxLoss(_Loss):
    """Module form of :func:`sparsegen.losses.sparsemax_loss` (``ignore_index`` as in
    ``torch.nn.CrossEntropyLoss``)."""

    def __init__(self, reduction: str = "mean", ignore_index: int = -100) -> None:
        super().__init__(reduction)
        self.ignore_index = ignore_index

    def forward(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return losses.sparsemax_loss(z, target, self.reduction, self.ignore_index)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ignore_index={self.ignore_index}"


class SparsegenLinHingeLoss(_Loss):
    """Module form of :func:`sparsegen.losses.sparsegen_lin_hinge_loss`."""

    def __init__(self, lam: float = 0.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.lam = lam

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return losses.sparsegen_lin_hinge_loss(z, y, lam=self.lam, reduction=self.reduction)


class SparsehourglassHingeLoss(_Loss):
    """Module form of :func:`sparsegen.losses.sparsehourglass_hinge_loss`."""

    def __init__(self, q: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.q = q

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return losses.sparsehourglass_hinge_loss(z, y, q=self.q, reduction=self.reduction)


def __getattr__(name: str) -> Any:  # SparseHourglassHingeLoss, deprecated: see _deprecated
    return _deprecated.resolve(__name__, globals(), name)
