"""``torch.nn.Module`` wrappers of the mappings (:mod:`sparsegen.functional`) and losses."""

from sparsegen.nn.losses import (
    LogisticLoss,
    SoftmaxLoss,
    SparsegenLinHingeLoss,
    SparseHourglassHingeLoss,
    SparsemaxLoss,
)
from sparsegen.nn.mappings import (
    Hardmax,
    Softmax,
    SparseCone,
    SparsegenExp,
    SparsegenLin,
    SparsegenSq,
    SparseHourglass,
    Sparsemax,
    SphericalSoftmax,
    SumNormalization,
    SumNormalizationPP,
)

__all__ = [
    "Hardmax",
    "LogisticLoss",
    "Softmax",
    "SoftmaxLoss",
    "SparseCone",
    "SparseHourglass",
    "SparseHourglassHingeLoss",
    "SparsegenExp",
    "SparsegenLin",
    "SparsegenLinHingeLoss",
    "SparsegenSq",
    "Sparsemax",
    "SparsemaxLoss",
    "SphericalSoftmax",
    "SumNormalization",
    "SumNormalizationPP",
]
