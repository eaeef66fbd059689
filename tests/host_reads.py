"""What stands in for CUDA's sync debug mode on CPU tensors: a tensor's value read on the
host, which on CUDA waits for the device. Python's reads (``item``, ``bool``…) are refused
in plain eager calls; the operators that read one (``nonzero``, boolean indexing…) are
recorded by a dispatch mode, which sees the calls through the dispatcher."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class HostReads(TorchDispatchMode):
    """The operators that read a value on the host (on CUDA: wait for the device)."""

    READS = frozenset(("_local_scalar_dense", "nonzero", "is_nonzero", "equal", "masked_select"))

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        indexed_by_bool = name in ("index", "index_put", "index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ()
        )
        if name in self.READS or indexed_by_bool:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


def refuse_host_reads(monkeypatch):
    """Python's reads of a tensor's value raise."""

    def refuse(method):
        def refused(self, *args):
            raise AssertionError(f"a tensor's value was read on the host ({method})")

        return refused

    for method in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, method, refuse(method))


def checked_as_on_a_device(monkeypatch):
    """CPU tensors' values checked as a CUDA tensor's are (:func:`sparsegen._validation.
    on_device`): an invalid parameter or mask entry made NaN, never read to raise; in every
    module that holds the function."""
    from sparsegen import _projection, _validation, attention, functional

    for module in (_validation, _projection, functional, attention):
        monkeypatch.setattr(module, "on_device", lambda t: not torch.compiler.is_compiling())
