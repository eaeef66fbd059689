"""``torch.nn.Module`` wrappers: the mappings (:mod:`sparsegen.functional`), losses, attention.

A module is named after its function, in CamelCase with one capital per
underscore-separated word: ``sparsegen_lin`` → ``SparsegenLin``, ``sparsehourglass``
→ ``Sparsehourglass``, ``sparsehourglass_hinge_loss`` → ``SparsehourglassHingeLoss``
(``pp``, for "++", is written ``PP``: ``SumNormalizationPP``).
"""

from typing import Any

from sparsegen.nn import _deprecated
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
    SparsehourglassHingeLoss,
    SparsemaxLoss,
)
from sparsegen.nn.mappings import (
    MAPPINGS,
    Hardmax,
    Softmax,
    Sparsecone,
    SparsegenExp,
    SparsegenLin,
    SparsegenSq,
    Sparsehourglass,
    Sparsemax,
    SphericalSoftmax,
    SumNormalization,
    SumNormalizationPP,
    mapping_module,
    mapping_name,
    mapping_parameters,
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
    "Sparsecone",
    "SparsegenExp",
    "SparsegenLin",
    "SparsegenLinHingeLoss",
    "SparsegenSq",
    "Sparsehourglass",
    "SparsehourglassHingeLoss",
    "Sparsemax",
    "SparsemaxLoss",
    "SphericalSoftmax",
    "SumNormalization",
    "SumNormalizationPP",
    "mapping_module",
    "mapping_name",
    "mapping_parameters",
    "sparsify_attention",
]


def __getattr__(name: str) -> Any:  # old names (SparseHourglass, …), deprecated: see _deprecated
    return _deprecated.resolve(__name__, globals(), name)
