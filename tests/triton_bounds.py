"""Every load, store and atomic of a Triton kernel run in Triton's interpreter checked to
fall inside one of the tensors its launch passed: an out-of-bounds access, which a GPU
would make silently (compute-sanitizer's memory checker finds it there), fails the test
that made it, naming the kernel.

The interpreter runs a kernel on the host copies of its arguments and dereferences the
raw addresses it computes, so the check wraps its memory operations: the unmasked
addresses (with the element's size) must lie within the extent of one argument tensor's
view, from its first element to its last. ``tests/conftest.py`` turns it on for the whole
suite when the kernels run in the interpreter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from triton.runtime import interpreter


class OutOfBounds(AssertionError):
    """A kernel touched memory outside every tensor its launch passed."""


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


# The kernel running now and its arguments' extents (the interpreter runs one at a time).
_launch: dict = {"kernel": "", "extents": []}


def _check(pointers, mask, what: str) -> None:
    addresses = np.asarray(pointers.data, dtype=np.uint64)
    live = np.broadcast_to(np.asarray(mask.data, dtype=bool), addresses.shape)
    addresses = addresses[live]
    if addresses.size == 0:
        return
    size = pointers.get_element_ty().primitive_bitwidth // 8
    inside = np.zeros(addresses.shape, dtype=bool)
    for start, end in _launch["extents"]:
        inside |= (addresses >= start) & (addresses + size <= end)
    if not inside.all():
        raise OutOfBounds(
            f"{_launch['kernel']}: a {what} of {int((~inside).sum())} of {addresses.size} "
            "addresses outside every tensor the launch passed"
        )


@contextlib.contextmanager
def bounds_checked() -> Iterator[None]:
    """Inside the block, the interpreter's memory operations are bounds-checked."""
    executor, builder = interpreter.GridExecutor, interpreter.InterpreterBuilder
    saved = (executor._init_args_hst, builder.create_masked_load, builder.create_masked_store,
             builder.create_atomic_rmw)  # fmt: skip
    init_args, load, store, atomic = saved

    def init_args_checked(self, args_dev, kwargs):
        args_hst, kwargs_hst = init_args(self, args_dev, kwargs)
        _launch["kernel"] = getattr(self.fn, "__name__", "a kernel")
        extents = (_extent(t) for t in _tensors(args_hst, kwargs_hst))
        _launch["extents"] = [extent for extent in extents if extent is not None]
        return args_hst, kwargs_hst

    def load_checked(self, ptrs, mask, *args):
        _check(ptrs, mask, "load")
        return load(self, ptrs, mask, *args)

    def store_checked(self, ptrs, value, mask, *args):
        _check(ptrs, mask, "store")
        return store(self, ptrs, value, mask, *args)

    def atomic_checked(self, op, ptr, value, mask, *args):
        _check(ptr, mask, "atomic")
        return atomic(self, op, ptr, value, mask, *args)

    executor._init_args_hst = init_args_checked
    builder.create_masked_load, builder.create_masked_store = load_checked, store_checked
    builder.create_atomic_rmw = atomic_checked
    try:
        yield
    finally:
        (executor._init_args_hst, builder.create_masked_load, builder.create_masked_store,
         builder.create_atomic_rmw) = saved  # fmt: skip
