"""Two memory errors a GPU makes silently and Triton's interpreter hides, caught in the
interpreter instead, in every Triton kernel the suite runs:

- **out of bounds**: every load, store and atomic must fall inside one of the tensors
  its launch passed (compute-sanitizer's memory checker finds these on a GPU);
- **a read without a barrier**: a program that loads what it stored itself earlier
  must have called ``tl.debug_barrier()`` in between. On a GPU a program is many threads,
  and the thread that loads an element need not be the one that stored it, so without a
  barrier it may read the old value; the interpreter runs a program as one thread and
  always reads the new one.

The interpreter runs a kernel on the host copies of its arguments and dereferences the
raw addresses it computes, so the checks wrap its memory operations: the unmasked
addresses (with the element's size) must lie within the extent of one argument tensor's
view, from its first element to its last, and no load may read an address the same
program stored since its start or its last barrier. A failure names the kernel.
``tests/conftest.py`` turns both on for the whole suite when the kernels run in the
interpreter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from triton.runtime import interpreter


class OutOfBounds(AssertionError):
    """A kernel touched memory outside every tensor its launch passed."""


class ReadWithoutBarrier(AssertionError):
    """A program loaded what it had stored, with no barrier in between."""


def _extent(t: torch.Tensor) -> tuple[int, int] | None:
    """``[first byte, past the last byte)`` of a view, strides as they are; None if empty."""
    if t.numel() == 0:
        return None
    span = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
    start = t.data_ptr()
    return start, start + (span + 1) * t.element_size()


def _tensors(args: list, kwargs: dict) -> Iterator[torch.Tensor]:
    for arg in (*args, *kwargs.values()):
        if isinstance(arg, tuple):
            yield from _tensors(list(arg), {})
        elif isinstance(arg, torch.Tensor):
            yield arg


# The kernel running now, its arguments' extents, and the addresses the program running
# now stored since it started or last met a barrier (the interpreter runs one at a time).
_launch: dict = {"kernel": "", "extents": [], "stored": []}


def _live(pointers, mask) -> np.ndarray:
    addresses = np.asarray(pointers.data, dtype=np.uint64)
    return addresses[np.broadcast_to(np.asarray(mask.data, dtype=bool), addresses.shape)]


def _check_bounds(pointers, addresses: np.ndarray, what: str) -> None:
    size = pointers.get_element_ty().primitive_bitwidth // 8
    inside = np.zeros(addresses.shape, dtype=bool)
    for start, end in _launch["extents"]:
        inside |= (addresses >= start) & (addresses + size <= end)
    if not inside.all():
        raise OutOfBounds(
            f"{_launch['kernel']}: a {what} of {int((~inside).sum())} of {addresses.size} "
            "addresses outside every tensor the launch passed"
        )


def _check_barrier(addresses: np.ndarray) -> None:
    if not _launch["stored"] or addresses.size == 0:
        return
    again = np.isin(addresses, np.concatenate(_launch["stored"]))
    if again.any():
        raise ReadWithoutBarrier(
            f"{_launch['kernel']}: a load of {int(again.sum())} addresses the program stored "
            "itself with no tl.debug_barrier() since: on a GPU another of its threads may "
            "read the old values"
        )


@contextlib.contextmanager
def memory_checked() -> Iterator[None]:
    """Inside the block, the interpreter's memory operations are checked (module doc)."""
    executor, builder = interpreter.GridExecutor, interpreter.InterpreterBuilder
    names = ("_init_args_hst", "set_grid_idx", "create_barrier", "create_masked_load",
             "create_masked_store", "create_atomic_rmw")  # fmt: skip
    owners = (executor, *(builder,) * 5)
    saved = [getattr(owner, name) for owner, name in zip(owners, names, strict=True)]
    init_args, set_grid_idx, barrier, load, store, atomic = saved

    def init_args_checked(self, args_dev, kwargs):
        args_hst, kwargs_hst = init_args(self, args_dev, kwargs)
        _launch["kernel"] = getattr(self.fn, "__name__", "a kernel")
        extents = (_extent(t) for t in _tensors(args_hst, kwargs_hst))
        _launch["extents"] = [extent for extent in extents if extent is not None]
        return args_hst, kwargs_hst

    def program_started(self, x, y, z):
        _launch["stored"] = []
        return set_grid_idx(self, x, y, z)

    def barrier_met(self):
        _launch["stored"] = []
        return barrier(self)

    def load_checked(self, ptrs, mask, *args):
        addresses = _live(ptrs, mask)
        _check_bounds(ptrs, addresses, "load")
        _check_barrier(addresses)
        return load(self, ptrs, mask, *args)

    def store_checked(self, ptrs, value, mask, *args):
        addresses = _live(ptrs, mask)
        _check_bounds(ptrs, addresses, "store")
        _launch["stored"].append(addresses)
        return store(self, ptrs, value, mask, *args)

    def atomic_checked(self, op, ptr, value, mask, *args):
        _check_bounds(ptr, _live(ptr, mask), "atomic")
        return atomic(self, op, ptr, value, mask, *args)

    checked = (init_args_checked, program_started, barrier_met, load_checked, store_checked,
               atomic_checked)  # fmt: skip
    for owner, name, function in zip(owners, names, checked, strict=True):
        setattr(owner, name, function)
    try:
        yield
    finally:
        for owner, name, function in zip(owners, names, saved, strict=True):
            setattr(owner, name, function)
