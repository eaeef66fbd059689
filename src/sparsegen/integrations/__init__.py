"""Adapters that put sparsegen's mappings into other libraries' models.

Each submodule imports its library when first used, so ``import sparsegen`` never
needs it; a missing one is a one-line error naming the extra that installs it.

* :mod:`sparsegen.integrations.transformers`: Hugging Face ``transformers``
  models with ``attn_implementation="sparsemax"`` (or any mapping of the family).
"""
