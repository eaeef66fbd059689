"""TorchScript: sparsegen's modules say what to use instead of ``torch.jit.script``."""

from __future__ import annotations


class NotScriptable:
    """Mixin for modules that ``torch.jit.script`` cannot compile.

    ``torch.jit.script`` calls ``__prepare_scriptable__`` on a module and on
    every submodule before compiling, so a model that holds one of these fails
    at once with this message instead of deep inside the TorchScript compiler.
    """

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"torch.jit.script cannot compile sparsegen's {type(self).__name__} (its forward "
            "calls Python that TorchScript does not support). Use torch.compile, "
            "torch.export.export or torch.onnx.export(..., dynamo=True); torch.jit.trace "
            "also works (it records the sparsegen::project operator)."
        )
