"""Argument checking and NumPy interoperability shared by the public functions."""

from __future__ import annotations

import functools
import math
import numbers
import operator
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import numpy as np
import torch

Scalar = float | int
Parameter = Scalar | torch.Tensor
# what the public API takes as a parameter: also NumPy numbers, and per-slice values as an
# array or a list
ParameterLike = (
    Parameter
    | np.floating[Any]
    | np.integer[Any]
    | np.ndarray
    | Sequence[float]
    | Sequence[Sequence[float]]
)

F = TypeVar("F", bound=Callable[..., Any])


def _to_argument(value: Any) -> Any:
    """A parameter: a 0-d numeric array is a number (``lam=np.array(0.5)``, as the modules
    and losses take it), any other array a tensor."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        return value.item()
    return _to_tensor(value)


def _to_tensor(value: Any) -> Any:
    return from_numpy(value) if isinstance(value, np.ndarray) else value


def from_numpy(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory where torch can (else a copy: negative strides, a
    byte order not the machine's), a read-only array's too without torch's warning that
    writing to it is undefined (pandas' ``to_numpy()``, a memmap): the library only reads."""
    global _READ_ONLY_WARNING_SPENT
    if torch.compiler.is_compiling():  # (dynamo traces arrays as tensors, not their flags)
        return torch.from_numpy(array)
    # torch gives that warning once per process: after a read-only array it has taken, none
    # needs silencing, and catch_warnings (which swaps the process's filters under any other
    # thread's feet) is not entered again
    if array.flags.writeable or _READ_ONLY_WARNING_SPENT:
        return _shared(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        try:
            tensor = torch.from_numpy(array)
        except (ValueError, TypeError):  # copied, writable: torch may not have warned yet
            return _shared(array)
    _READ_ONLY_WARNING_SPENT = True
    return tensor


_READ_ONLY_WARNING_SPENT = False


def _shared(array: np.ndarray) -> torch.Tensor:
    try:
        return torch.from_numpy(array)
    except (ValueError, TypeError):  # negative strides, a swapped byte order, a dtype torch lacks
        return torch.from_numpy(np.ascontiguousarray(array, array.dtype.newbyteorder("=")))


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_to_numpy(v) for v in value))
    return value


def _any_array(values: Any) -> bool:
    for value in values:
        if isinstance(value, np.ndarray):
            return True
    return False


def accepts_numpy(fn: F) -> F:
    """Let a tensor function take NumPy arrays: arrays in, arrays out.

    Every ``np.ndarray`` argument becomes a tensor sharing its memory (a 0-d numeric one, a
    number); if the
    first argument was an array, tensors in the result become arrays.
    """

    @functools.wraps(fn)
    def wrapper(x, *args, **kwargs):
        numpy_in = isinstance(x, np.ndarray)
        if not (numpy_in or _any_array(args) or _any_array(kwargs.values())):
            return fn(x, *args, **kwargs)  # the common case, kept cheap
        args = tuple(_to_argument(a) for a in args)
        kwargs = {k: _to_argument(v) for k, v in kwargs.items()}
        result = fn(_to_tensor(x), *args, **kwargs)
        return _to_numpy(result) if numpy_in else result

    return wrapper  # type: ignore[return-value]


def plain(t: torch.Tensor) -> torch.Tensor:
    """``t`` without functorch's wrappers (vmap's batched tensors, grad's tracking tensors):
    the values underneath, all batch entries at once."""
    while torch._C._functorch.is_functorch_wrapped_tensor(t):
        t = torch._C._functorch.get_unwrapped(t)
    return t


def _symbolic(t: torch.Tensor) -> bool:
    """Whether ``t``'s values (functorch's wrappers taken off) are unknown in Python."""
    return (
        torch.jit.is_tracing()
        or type(t) is not torch.Tensor
        or t.is_meta
        or torch._C._len_torch_dispatch_stack() > 0
    )


def known_within(t: torch.Tensor, low: float, high: float) -> bool:
    """Whether every element of ``t`` is known to be finite and in ``[low, high]``, by one
    reduction: the elementwise checks take several passes each (on the CPU a comparison's
    bool output costs more than a reduction). False where the values are not known (see
    :func:`check_values`), or an element is outside, NaN included: the caller's
    elementwise checks then run, and name what is wrong."""
    if torch.compiler.is_compiling():
        return False
    t = plain(t)
    if t.numel() == 0 or _symbolic(t):
        return False
    lowest, highest = torch.aminmax(t)
    inside = (lowest >= low) & (highest <= high) & (lowest > -math.inf) & (highest < math.inf)
    return bool(inside)


def check_values(
    valid: torch.Tensor, error: type[Exception], message: Callable[[], str], traced: str
) -> bool:
    """Raise ``error(message())`` unless every element of ``valid`` is True; returns
    whether the check is an assertion in a graph instead (see below).

    Where the values are not known in Python (``torch.compile``, ``torch.export``,
    ``torch.jit.trace``, fake and meta tensors) a Python branch would be baked
    into the graph, so the check becomes a run-time assertion in the graph
    (``torch._assert_async``) with the message ``traced``. Under vmap every
    batch entry is checked.
    """
    compiling = torch.compiler.is_compiling()
    if not compiling:  # (dynamo cannot trace the unwrapping)
        valid = plain(valid)
    symbolic = compiling or _symbolic(valid)
    if symbolic:
        torch._assert_async(valid.all(), traced)
    elif not bool(valid.all()):
        raise error(message())
    return symbolic


def moved(
    t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None, what: str = ""
) -> torch.Tensor:
    """``t`` on ``device`` (in ``dtype``): a copy from the host to a GPU is queued without
    the host waiting for it (a blocking one synchronises: a CPU mask or λ beside CUDA
    scores). ``t`` on another device than the host's and the scores' (a GPU's beside CPU
    scores, another GPU's, a meta tensor) is a ``ValueError`` naming it (``what``), as
    torch's own operations refuse it: its copy would wait for that device, or have no
    values to copy."""
    if t.device == device and (dtype is None or t.dtype == dtype):
        return t  # (the common case: nothing to copy, and .to's own parsing skipped)
    if t.device != device and not t.is_cpu:
        raise ValueError(
            f"{what or 'a tensor'} is on {t.device}, the scores on {device}: put it on the "
            "scores' device (a CPU one is moved there for you)"
        )
    queued = t.is_cpu and device.type == "cuda"
    return t.to(device=device, dtype=dtype, non_blocking=queued)


def on_device(t: torch.Tensor) -> bool:
    """Whether reading ``t``'s values in Python would wait for a device (a CUDA tensor
    in eager mode): checks on it are then results instead, never a synchronisation."""
    compiling = torch.compiler.is_compiling()
    return not compiling and not t.is_cpu and not t.is_meta and type(plain(t)) is torch.Tensor


def checked_parameter(
    value: torch.Tensor, valid: torch.Tensor, message: Callable[[], str], rule: str
) -> torch.Tensor:
    """``value``, checked: a ``ValueError`` where an element is not ``valid``, except on a
    device (:func:`on_device`), where such elements become NaN (their slices' outputs
    are then NaN, as for a NaN scale) so that no call waits for the device. A graph
    (compiled, exported, traced) holds both: the run-time assertion and the NaN; a compiled
    ``torch.func`` transform the NaN only (torch has no batching rule for the assertion)."""
    if on_device(value) or (
        torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()
    ):
        return torch.where(valid, value, math.nan)
    if check_values(valid, ValueError, message, rule):
        # the graph's assertion may be dropped (ONNX keeps no assertion, nor does a trace):
        # the invalid elements are NaN in the graph too
        return torch.where(valid, value, math.nan)
    return value


HALF_DTYPES = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype in which scores of ``dtype`` are computed: float32 for the half types."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def check_dense(x: torch.Tensor, name: str) -> None:
    """``TypeError`` for a sparse or nested tensor, saying to densify it."""
    if x.is_nested or x.layout != torch.strided:
        kind = "a nested" if x.is_nested else f"a {str(x.layout).removeprefix('torch.')}"
        raise TypeError(
            f"{name} takes dense (strided) tensors; got {kind} tensor: densify it first "
            "(x.to_dense(), or x.to_padded_tensor(float('-inf')) for a nested one)"
        )


def check_input(x: Any, name: str, keep_half: bool = False) -> tuple[torch.Tensor, torch.dtype]:
    """Check that ``x`` is a floating tensor; return it in its compute dtype and its own dtype.

    float16 and bfloat16 are computed in float32 and cast back at the end; with
    ``keep_half`` they are returned as they are, for a kernel that reads them and computes
    in float32 itself (no float32 copy in, none out).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor or a numpy.ndarray; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} expects a floating-point input; got dtype {x.dtype}. "
            "Cast it first, e.g. x.float() or x.astype(np.float32)."
        )
    check_dense(x, name)
    if x.ndim == 0:
        raise ValueError(f"{name} expects an input with at least one dimension; got a scalar")
    if x.dtype in HALF_DTYPES and not keep_half:
        return x.float(), x.dtype
    return x, x.dtype


def check_int(value: Any, what: str) -> int:
    """``value`` as an int: anything with ``__index__`` (a NumPy integer, a 0-d integer
    tensor) but a bool; a float or None is a ``TypeError`` saying ``what`` it is."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{what} must be an int; got {type(value).__name__}")
    return operator.index(value)


def check_dim(dim: Any, name: str) -> int:
    """``dim`` as an int (:func:`check_int`), as in torch's functions."""
    return check_int(dim, f"{name}: dim")


def check_mask(mask: Any, x: torch.Tensor, name: str) -> torch.Tensor | None:
    """Check a boolean mask (True = keep) that broadcasts to ``x``'s shape."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        kind = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"{name}: mask must be a boolean tensor or array (True = keep); got {kind}")
    if not broadcastable(mask.shape, x.shape, onto=True):
        raise ValueError(
            f"{name}: mask of shape {tuple(mask.shape)} does not broadcast to "
            f"the input's shape {tuple(x.shape)}"
        )
    return moved(mask, x.device, what=f"{name}: the mask")


def _checked_number(value: Any, name: str, fn: str) -> Parameter:
    """A real scalar of any kind (``np.float32(0.5)``, a 0-d array, ``numpy.int64``) as a
    python float; a floating tensor as it is; anything else a ``TypeError``."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a number or a tensor; got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor; got {value.dtype}")
    return value


def check_lam(lam: Any, fn: str, in_kernel: bool = False) -> Parameter:
    """``lam`` must be < 1: sparsegen divides by ``1 - lam`` (a tensor on a device: NaN
    where it is not, see :func:`checked_parameter`; ``in_kernel``: the kernels that take
    it make that NaN themselves, and such a tensor is left as it is)."""
    lam = _checked_number(lam, "lam", fn)
    rule = f"{fn}: lam must be < 1 (sparsegen scales by 1/(1 - lam))"
    if isinstance(lam, Scalar):
        if not lam < 1:
            raise ValueError(f"{rule}; got {lam}")
        return lam
    if in_kernel and on_device(lam):
        return lam
    return checked_parameter(lam, lam < 1, lambda: f"{rule}; got {plain(lam).max().item()}", rule)


def check_q(q: Any, fn: str, positive: bool = False, in_kernel: bool = False) -> Parameter:
    """``q`` must be >= 0, or > 0 where ``positive`` (a python ``inf`` is allowed: the
    sparsemax limit; a tensor on a device: NaN where it is not, see
    :func:`checked_parameter`; ``in_kernel``: the kernels that take it make that NaN
    themselves, and such a tensor is left as it is)."""
    q = _checked_number(q, "q", fn)
    bound = "> 0" if positive else ">= 0"
    if isinstance(q, Scalar):
        if not (q > 0 if positive else q >= 0):
            raise ValueError(f"{fn}: q must be {bound} (q = inf gives sparsemax); got {q}")
        return q
    if in_kernel and on_device(q):
        return q
    rule = f"{fn}: a tensor q must be finite and {bound}"
    return checked_parameter(
        q,
        (q > 0 if positive else q >= 0) & torch.isfinite(q),
        lambda: f"{rule}; got values in [{plain(q).min().item()}, {plain(q).max().item()}]",
        rule,
    )


def slice_parameter(value: Parameter, x: torch.Tensor, dim: int, name: str, fn: str) -> Parameter:
    """A parameter as a python number or a tensor of ``x``'s rank with size 1 along ``dim``."""
    if isinstance(value, Scalar):
        return float(value)
    value = moved(value, x.device, compute_dtype(x.dtype), f"{fn}: {name}")
    if value.ndim == 0:
        return value
    if value.ndim > x.ndim:
        raise ValueError(f"{fn}: {name} has more dimensions ({value.ndim}) than the input")
    given = tuple(value.shape)
    value = value.reshape((1,) * (x.ndim - value.ndim) + given)
    if value.shape[dim] != 1 or not broadcastable(value.shape, x.shape):
        _raise_sliced(given, value, x, dim, name, fn)
    return value


def _raise_sliced(
    given: tuple, value: torch.Tensor, x: torch.Tensor, dim: int, name: str, fn: str
) -> NoReturn:
    """The error for a per-slice parameter of the wrong shape, named as the caller gave it,
    with its alignment to the input's last dimensions."""
    shown = given if value.shape == given else f"{given}, aligned as {tuple(value.shape)}"
    if value.shape[dim] != 1:
        raise ValueError(
            f"{fn}: a tensor {name} holds one value per slice, so its size along dim "
            f"{dim} must be 1; got shape {shown} for an input of shape {tuple(x.shape)}"
        )
    raise ValueError(
        f"{fn}: {name} of shape {shown} does not broadcast to the input's shape {tuple(x.shape)}"
    )


def slice_lam(lam: Any, x: torch.Tensor, dim: int, fn: str, in_kernel: bool = False) -> Parameter:
    """``lam`` checked (:func:`check_lam`, ``in_kernel`` as there) and sliced
    (:func:`slice_parameter`). A tensor
    ``λ < 1`` that the cast to the compute dtype rounds to 1 (a float64 λ within 1e-8 of 1,
    float32 scores) is held at that dtype's largest value below 1, its gradient passed
    through, as the modules hold a learnt λ: ``1/(1 − λ)`` and its derivatives stay finite.
    A λ already in that dtype is not held: below 1, it stays so (six operations fewer, each
    a kernel launch on a GPU)."""
    given = check_lam(lam, fn, in_kernel)
    lam = slice_parameter(given, x, dim, "lam", fn)
    if (
        isinstance(lam, torch.Tensor)
        and isinstance(given, torch.Tensor)
        and given.dtype.itemsize > lam.dtype.itemsize  # (a cast that may round λ up to 1)
    ):
        lam = held(lam, high=1 - torch.finfo(lam.dtype).eps / 2)  # (the spacing below 1)
    return lam


def slice_q(
    q: Any, x: torch.Tensor, dim: int, fn: str, positive: bool = False, in_kernel: bool = False
) -> Parameter:
    """``q`` checked (:func:`check_q`, ``in_kernel`` as there) and sliced
    (:func:`slice_parameter`)."""
    return slice_parameter(check_q(q, fn, positive, in_kernel), x, dim, "q", fn)


def held(value: torch.Tensor, low: float | None = None, high: float | None = None) -> torch.Tensor:
    """``value`` held within ``[low, high]``, its gradient passed through unchanged: a
    parameter that drifts past a bound still feels the loss, and comes back when the loss
    wants it to. An infinite value is held with no gradient (``inf − inf`` would be NaN);
    only the bounds given enter the graph (an infinite constant makes inductor's NaN)."""
    kept = value if low is None else torch.where(value < low, low, value)
    kept = kept if high is None else torch.where(kept > high, high, kept)
    through = kept.detach() + (value - value.detach())  # kept's value, value's gradient
    return torch.where(value.isinf(), kept.detach(), through)


def broadcastable(shape: Sequence[int], target: Sequence[int], onto: bool = False) -> bool:
    """Whether ``shape`` and ``target`` broadcast together (``onto``: to ``target`` itself).

    The rule of ``torch.broadcast_shapes``, without its cost (its dispatch costs as much
    as a short row's projection).
    """
    if len(shape) > len(target):
        if onto:
            return False
        shape, target = target, shape
    pairs = zip(reversed(shape), reversed(target), strict=False)  # target may be longer
    return all(s == t or s == 1 or (t == 1 and not onto) for s, t in pairs)


def number_tensor(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``value`` as a 0-d tensor on ``device``, filled there (a copy would wait for it).
    Under ``torch.compile``, a product with it: inductor takes a number in a product as an
    input of the graph, where ``full`` makes it a constant guarded to its value (so that each
    new λ recompiled, and past torch's recompile limit, ran uncompiled)."""
    if torch.compiler.is_compiling():
        return torch.ones((), dtype=dtype, device=device) * value
    return torch.full((), value, dtype=dtype, device=device)


def log_one_minus(lam: Parameter, like: torch.Tensor) -> Parameter:
    """``log(1 − λ)``, of a number in float64. Under ``torch.compile`` a number goes through
    a 0-d float64 tensor on ``like``'s device: ``math.log1p`` would make it a constant of
    the graph, guarded to its value, so that each new λ recompiled (and past torch's
    recompile limit, ran uncompiled)."""
    if not isinstance(lam, float):
        return torch.log1p(-lam)
    if not torch.compiler.is_compiling():
        return math.log1p(-lam)
    return torch.log1p(number_tensor(-lam, torch.float64, like.device))


def is_inf(value: Parameter) -> bool:
    # Comparisons rather than math.isinf, which dynamo cannot trace on a symbolic float.
    return isinstance(value, Scalar) and (value == math.inf or value == -math.inf)


_PACKAGE = os.path.dirname(__file__)
_TORCH_MODULES = os.path.dirname(torch.nn.modules.module.__file__)


def outside_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` in the function that asks: the first frame
    outside sparsegen and torch's ``Module.__call__``, the user's line however deep the
    library was called from (a mapping module's forward, an attention module's). Under
    ``torch.compile``, which cannot read frames, the caller's caller."""
    if torch.compiler.is_compiling():
        return 3
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith((_PACKAGE, _TORCH_MODULES)):
        frame, level = frame.f_back, level + 1
    return level
