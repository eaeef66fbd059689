"""``torch.nn.Module`` wrappers of the mappings in :mod:`sparsegen.functional`."""

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
    "Softmax",
    "SparseCone",
    "SparseHourglass",
    "SparsegenExp",
    "SparsegenLin",
    "SparsegenSq",
    "Sparsemax",
    "SphericalSoftmax",
    "SumNormalization",
    "SumNormalizationPP",
]
