"""Loss modules: thin wrappers over :mod:`sparsegen.losses` (the classes along the scores'
last dimension, where ``torch.nn.CrossEntropyLoss`` takes them along dim 1).

``lam`` and ``q`` (numbers, tensors or lists) are checked when a module is built or
they are set, with the functions' errors, and shown in its ``repr``; ``reduction`` is
checked when it is built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsegen import losses
from sparsegen._validation import ParameterLike, check_lam, check_q
from sparsegen.nn import _deprecated
from sparsegen.nn._scripting import NotScriptable
from sparsegen.nn.mappings import _listed, _shown


class _Loss(NotScriptable, nn.Module):
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in losses.REDUCTIONS:  # (when built, not at the first forward)
            raise losses.reduction_error(reduction, type(self).__name__)
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class _IndexLoss(_Loss):
    """A loss that takes class indices, ``ignore_index`` as in ``torch.nn.CrossEntropyLoss``."""

    ignore_index = -100  # (the default also for a module unpickled without the attribute)

    def __init__(self, reduction: str = "mean", ignore_index: int = -100) -> None:
        super().__init__(reduction)
        self.ignore_index = ignore_index

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ignore_index={self.ignore_index}"


class SoftmaxLoss(_IndexLoss):
    """Module form of :func:`sparsegen.losses.softmax_loss` (``ignore_index`` as in
    ``torch.nn.CrossEntropyLoss``)."""

    def forward(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return losses.softmax_loss(z, target, self.reduction, self.ignore_index)


class LogisticLoss(_Loss):
    """Module form of :func:`sparsegen.losses.logistic_loss`."""

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return losses.logistic_loss(z, y, self.reduction)


class SparsemaxLoss(_IndexLoss):
    """Module form of :func:`sparsegen.losses.sparsemax_loss` (``ignore_index`` as in
    ``torch.nn.CrossEntropyLoss``)."""

    def forward(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return losses.sparsemax_loss(z, target, self.reduction, self.ignore_index)


class SparsegenLinHingeLoss(_Loss):
    """Module form of :func:`sparsegen.losses.sparsegen_lin_hinge_loss`."""

    def __init__(self, lam: ParameterLike = 0.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.lam = lam

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "lam":  # checked when set (built, or later), not at the next forward
            value = _listed(value)  # (a tensor as given: its graph, a Parameter registered)
            check_lam(value, type(self).__name__)
        super().__setattr__(name, value)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return losses.sparsegen_lin_hinge_loss(z, y, lam=self.lam, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"lam={_shown(_number(self.lam))}, {super().extra_repr()}"


class SparsehourglassHingeLoss(_Loss):
    """Module form of :func:`sparsegen.losses.sparsehourglass_hinge_loss`."""

    def __init__(self, q: ParameterLike = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.q = q

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "q":  # checked when set (built, or later), not at the next forward
            value = _listed(value)
            check_q(value, type(self).__name__, positive=True)
        super().__setattr__(name, value)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return losses.sparsehourglass_hinge_loss(z, y, q=self.q, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"q={_shown(_number(self.q))}, {super().extra_repr()}"


def _number(value: Any) -> float | torch.Tensor:
    """A parameter as ``_shown`` takes it: a tensor as it is, any real number a float."""
    return value if isinstance(value, torch.Tensor) else float(value)


def __getattr__(name: str) -> Any:  # SparseHourglassHingeLoss, deprecated: see _deprecated
    return _deprecated.resolve(__name__, globals(), name)
