"""``torch.nn.Module`` wrappers: the mappings (:mod:`sparsegen.functional`), losses, attention."""

from sparsegen.nn.attention import (
    AdditiveAttention,
    LuongAttention,
    MultiheadAttention,
    sparsify_attention,
)
from sparsegen.nn.losses import (
    LogisticLoss,
    SoftmaxLoss,
    SparsegenLinHingeLoss,
    SparseHourglassHingeLoss,
    SparsemaxLoss,
)
from sparsegen.nn.mappings import (
    MAPPINGS,
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
    mapping_module,
)

__all__ = [
    "MAPPINGS",
    "AdditiveAttention",
    "Hardmax",
    "LogisticLoss",
    "LuongAttention",
    "MultiheadAttention",
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
    "mapping_module",
    "sparsify_attention",
]
