"""Old public names, kept as deprecated aliases until sparsegen 0.2 (see the CHANGELOG).

The rule for a module's name is its function's name in CamelCase, one capital per
underscore-separated word (``sparsehourglass`` → ``Sparsehourglass``,
``sparsegen_lin_hinge_loss`` → ``SparsegenLinHingeLoss``); ``pp`` in
``sum_normalization_pp`` spells "++" and is written ``PP``. An old name is resolved by
the module-level ``__getattr__`` of the module that defines the new one (and of
:mod:`sparsegen.nn`), so it is in no ``__all__`` and not in the docs, and it is the
same class: ``isinstance(m, OldName)`` keeps working.
"""

from __future__ import annotations

import warnings
from typing import Any

#: old name → new name, per module that defines the new name.
RENAMED: dict[str, dict[str, str]] = {
    "sparsegen.nn.mappings": {
        "SparseCone": "Sparsecone",
        "SparseHourglass": "Sparsehourglass",
    },
    "sparsegen.nn.losses": {
        "SparseHourglassHingeLoss": "SparsehourglassHingeLoss",
    },
}
RENAMED["sparsegen.nn"] = {old: new for names in RENAMED.values() for old, new in names.items()}

REMOVED_IN = "0.2"


def resolve(module: str, namespace: dict[str, Any], name: str) -> Any:
    """The object ``namespace`` holds under old ``name``'s new name, with a ``FutureWarning``."""
    new = RENAMED.get(module, {}).get(name)
    if new is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    warnings.warn(
        f"{module}.{name} is deprecated and will be removed in sparsegen {REMOVED_IN}; "
        f"use {module}.{new} (the same class)",
        FutureWarning,
        stacklevel=3,  # resolve ← the module's __getattr__ ← the caller
    )
    return namespace[new]
