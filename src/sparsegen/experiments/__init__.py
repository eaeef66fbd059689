"""Experiments that reproduce the papers (run by the ``sparsegen`` command)."""
