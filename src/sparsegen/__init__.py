"""sparsegen: sparse probability mappings (sparsemax, the sparsegen family) for PyTorch and NumPy.

The mappings live in :mod:`sparsegen.functional` and are re-exported here;
:mod:`sparsegen.nn` has ``torch.nn.Module`` wrappers and :mod:`sparsegen.jacobian`
the explicit Jacobian matrices. The projection behind them is the PyTorch operator
``sparsegen::project`` (:mod:`sparsegen._ops`).
"""

from sparsegen import nn
from sparsegen._projection import ALGORITHMS, ProjectionResult
from sparsegen.functional import (
    hardmax,
    softmax,
    sparsecone,
    sparsegen,
    sparsegen_exp,
    sparsegen_lin,
    sparsegen_sq,
    sparsehourglass,
    sparsemax,
    spherical_softmax,
    sum_normalization,
    sum_normalization_pp,
)

__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS",
    "ProjectionResult",
    "hardmax",
    "nn",
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
