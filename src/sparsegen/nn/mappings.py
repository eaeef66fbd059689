"""Modules for the probability mappings: thin wrappers over :mod:`sparsegen.functional`.

Each module's ``forward(x, mask=None)`` calls its function along ``self.dim``,
and is named after it in CamelCase, one capital per underscore-separated word
(``sparsegen_lin`` → ``SparsegenLin``, ``sparsehourglass`` → ``Sparsehourglass``;
``pp``, for "++", is ``PP``: ``SumNormalizationPP``).
Parameterised mappings take ``learnable=True`` to make their parameter an
``nn.Parameter``, stored unconstrained so that training can never leave the
valid range:

* ``lam = 1 − exp(ρ)`` with ``ρ = log(1 − lam)`` learnt (``lam < 1`` always);
* ``q = exp(θ)`` with ``θ = log q`` learnt (``q > 0`` always; a learnable ``q``
  must start > 0).

The parameter comes first (``SparsegenLin(0.5)``, ``Sparsehourglass(q=2.0, dim=1)``); a
positional int warns, since torch's ``nn.Softmax(1)`` reads it as the dimension.
The current value is always readable as ``module.lam`` / ``module.q``. A
parameter may also be a tensor (or a list) of per-slice values that broadcasts
against the input with size 1 along ``dim``, e.g. one ``λ`` per attention head
as a ``(num_heads, 1, 1)`` tensor for scores of shape ``(B, H, Lq, Lk)``.

A fixed parameter is a hyperparameter, like the float options of torch's
modules: a number stays that number (exact in every dtype), a tensor is a
buffer that ``.to()`` moves, and neither is in the state dict (which holds
what training changes), so a sparse ``MultiheadAttention``'s loads into
torch's. A learnable module's state dict loads into a fixed one: its saved λ or q sets
the fixed value, with a warning where that changes it.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from sparsegen import functional as F
from sparsegen._validation import (
    ParameterLike,
    check_dim,
    check_lam,
    check_q,
    compute_dtype,
    held,
)
from sparsegen.nn import _deprecated
from sparsegen.nn._scripting import NotScriptable

__all__ = [
    "MAPPINGS",
    "Hardmax",
    "Softmax",
    "Sparsecone",
    "SparsegenExp",
    "SparsegenLin",
    "SparsegenSq",
    "Sparsehourglass",
    "Sparsemax",
    "SphericalSoftmax",
    "SumNormalization",
    "SumNormalizationPP",
    "mapping_module",
    "mapping_name",
    "mapping_parameters",
]


def _values(value: Any) -> float | torch.Tensor:
    """A python number as a float; a sequence or tensor as a float64 CPU tensor (one value
    per slice: float64, so that λ within float32's rounding of 1 keeps log(1 − λ) finite;
    on the CPU, so that a model built under ``torch.device("meta")`` keeps the values)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_):
        return float(value)  # (NumPy's numbers too)
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        return float(value)
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64, copy=True)
    return _listed(value)  # (anything else left to check_lam / check_q, which name the type)


def _given_values(value: Any, module: str, name: str) -> Any:
    """:func:`_values` of a module's λ or q, which must hold values: a meta tensor holds
    none, and an empty one would fit only empty inputs (a module's per-slice values apply
    to every input)."""
    if isinstance(value, torch.Tensor) and value.is_meta:
        raise ValueError(
            f"{module}: {name} is a meta tensor, which holds no values; give them (a number, "
            "a list, or a tensor on another device)"
        )
    value = _values(value)
    if isinstance(value, torch.Tensor) and value.numel() == 0:
        raise ValueError(
            f"{module}: {name} is an empty tensor; give a number, or one value per slice"
        )
    return value


def _listed(value: Any) -> Any:
    """Per-slice values given as a list or an array as a float64 CPU tensor (CPU under any
    device); anything else as it is."""
    if isinstance(value, list | tuple) or (isinstance(value, np.ndarray) and value.ndim):
        return torch.from_numpy(np.array(value, dtype=np.float64))
    return value


def _shown(value: torch.Tensor | float) -> str:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.device.type != "meta":
        value = value.item()
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"tensor of shape {tuple(value.shape)}"


Init = TypeVar("Init", bound=Callable[..., None])


def _ambiguous_int_first(init: Init) -> Init:
    """Warn where the parameter is given as a positional int: ``SparsegenLin(0)`` is λ = 0,
    which a reader of ``nn.Softmax(0)`` takes for ``dim=0`` (a float, ``SparsegenLin(0.5)``,
    is plainly the parameter)."""

    @functools.wraps(init)
    def checked(self: _Mapping, *args: Any, **kwargs: Any) -> None:
        dim_given = len(args) > 1 or "dim" in kwargs  # (then the int is plainly not the dim)
        if args and isinstance(args[0], int) and not isinstance(args[0], bool) and not dim_given:
            name, parameter = type(self).__name__, type(self).parameter
            warnings.warn(
                f"{name}({args[0]}) sets {parameter}={args[0]}, not dim={args[0]} as torch's "
                f"nn.Softmax({args[0]}) would: write {name}({parameter}={args[0]}) or "
                f"{name}(dim={args[0]}) to say which",
                UserWarning,
                stacklevel=2,
            )
        init(self, *args, **kwargs)

    return checked  # type: ignore[return-value]


class _Mapping(NotScriptable, nn.Module):
    function: Callable[..., torch.Tensor]

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = check_dim(dim, type(self).__name__)  # when built, not at the first forward

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return type(self).function(x, dim=self.dim, mask=mask)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # A NaN learnt λ or q (a diverged run's) is refused where it is loaded, naming its
        # key, rather than at the next forward; ±inf load (held at their limits)
        for name in self._parameters:
            _check_saved(state_dict.get(prefix + name), prefix + name)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _fix(self, name: str, value: torch.Tensor) -> None:
        """A fixed per-slice value as the buffer ``name``: a hyperparameter, so not state,
        that ``.to()`` moves; rebuilt at each conversion from a float64 copy, so that no
        cast changes what it holds (a half type, ``meta`` then ``to_empty``), and kept in
        float32 at least (in float16, q = 1e5 is inf)."""
        held = getattr(self, "_fixed", {})
        self._fixed = {**held, name: value.detach().to("cpu", torch.float64).clone()}
        buffer = self._buffers.get(name)
        like = buffer if buffer is not None else value.to(torch.get_default_dtype())
        self.register_buffer(name, self._rebuilt(name, like), persistent=False)

    def _rebuilt(self, name: str, like: torch.Tensor) -> torch.Tensor:
        return self._fixed[name].to(like.device, compute_dtype(like.dtype))

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        module = super()._apply(fn, recurse)
        for name in getattr(self, "_fixed", {}):
            if name in self._buffers:  # (a parametrization moves it into a child of its own)
                self._buffers[name] = self._rebuilt(name, self._buffers[name])
        return module


class Softmax(_Mapping):
    """Module form of :func:`sparsegen.softmax`."""

    function = staticmethod(F.softmax)


class Hardmax(_Mapping):
    """Module form of :func:`sparsegen.hardmax`."""

    function = staticmethod(F.hardmax)


class SumNormalization(_Mapping):
    """Module form of :func:`sparsegen.sum_normalization`."""

    function = staticmethod(F.sum_normalization)


class SphericalSoftmax(_Mapping):
    """Module form of :func:`sparsegen.spherical_softmax`."""

    function = staticmethod(F.spherical_softmax)


class Sparsemax(_Mapping):
    """Module form of :func:`sparsegen.sparsemax`."""

    function = staticmethod(F.sparsemax)


class SumNormalizationPP(_Mapping):
    """Module form of :func:`sparsegen.sum_normalization_pp`."""

    function = staticmethod(F.sum_normalization_pp)


def _holds_nan(value: object) -> bool:
    """Whether ``value`` is a tensor with a NaN in it (a meta tensor holds no values)."""
    if not isinstance(value, torch.Tensor) or value.is_meta or not value.is_floating_point():
        return False
    return bool(value.isnan().any())


def _check_saved(saved: object, key: str) -> None:
    if _holds_nan(saved):
        raise ValueError(
            f"{key}: the saved value is NaN (from a run that diverged?); a learnt λ or q must "
            "load as a number"
        )


class _ParameterMapping(_Mapping):
    """A mapping with a parameter (λ or q), learnt as ``learnt_name`` or fixed."""

    parameter: str
    symbol: str  # as messages name the parameter
    learnt_name: str
    learnable: bool

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # A learnable module's saved value loaded into a fixed module sets the fixed value
        # (as a fixed λ's own older state dicts, which held it, still do), with a warning
        # where that changes it: a state dict quietly replacing a hyperparameter is a surprise
        saved = None if self.learnable else state_dict.pop(prefix + self.learnt_name, None)
        if saved is not None:
            self._take_saved(saved, prefix + self.learnt_name)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _take_saved(self, saved: torch.Tensor, key: str) -> None:
        _check_saved(saved, key)
        current = getattr(self, self.parameter)
        shape = tuple(current.shape) if isinstance(current, torch.Tensor) else ()
        if saved.numel() > 1 and tuple(saved.shape) != shape:
            raise ValueError(
                f"{key}: a saved {self.symbol} of shape {tuple(saved.shape)} for a module of "
                f"{self.symbol} {_shown(current)}"
            )
        value = self._from_learnt(_on_cpu(saved))
        value = (value.reshape(()) if value.numel() == 1 else value).expand(shape)
        unknown = isinstance(current, torch.Tensor) and current.is_meta  # (holds no values)
        if not unknown and not torch.allclose(value, _on_cpu(current).expand(shape), rtol=1e-6):
            warnings.warn(
                f"{key}: the saved {self.symbol} {_shown(value)} replaces the fixed "
                f"{self.symbol} {_shown(current)} of this {type(self).__name__} (a fixed value "
                "is a hyperparameter; with learnable=True it is state)",
                stacklevel=2,
            )
        self._set_fixed(value.clone() if shape else float(value))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        value = {self.parameter: self._value_for(x)}
        try:
            return type(self).function(x, dim=self.dim, mask=mask, **value)
        except ValueError as error:  # (the function names its argument, not this parameter)
            if self.learnable and _holds_nan(getattr(self, self.learnt_name)):
                raise ValueError(
                    f"{type(self).__name__}.{self.learnt_name} is NaN (did training diverge?): "
                    f"{self.symbol} must be a number; reset_parameters() starts it again"
                ) from error
            raise

    def _value_for(self, x: torch.Tensor) -> torch.Tensor | float:
        raise NotImplementedError

    def _from_learnt(self, saved: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _set_fixed(self, value: torch.Tensor | float) -> None:
        raise NotImplementedError


def _check_learnable(learnable: object, name: str) -> bool:
    """``learnable`` as a bool (``"yes"`` or ``1.0`` would read as true, and ``"no"`` too)."""
    if not isinstance(learnable, bool | np.bool_):
        raise TypeError(f"{name}: learnable must be a bool; got {learnable!r}")
    return bool(learnable)


def _learnable(module: _Mapping, initial: torch.Tensor) -> nn.Parameter:
    """The learnt parameter (log(1 − λ) or log q), empty, in the default dtype and device
    (``meta`` under ``torch.device("meta")``); ``initial``, a float64 CPU tensor, is kept
    for ``reset_parameters``, which sets it (at build, and after ``meta`` and
    ``to_empty``)."""
    module._initial = initial.detach().to("cpu", torch.float64).clone()
    return nn.Parameter(torch.empty(initial.shape))


def _on_cpu(value: float | torch.Tensor) -> torch.Tensor:
    """A number or a CPU tensor as a float64 CPU tensor, whatever the default device (under
    ``torch.device("meta")``, ``torch.tensor`` makes a tensor without a value)."""
    if isinstance(value, torch.Tensor):  # (numpy 2 asks a tensor's __array__ for copy=)
        return value.detach().to("cpu", torch.float64, copy=True)
    return torch.from_numpy(np.array(value, dtype=np.float64))


def _bounds(log_value: torch.Tensor, low: float) -> tuple[float, float]:
    """A learnt log(1 − λ) or log q held from ``low`` to half the dtype's largest exponent:
    |λ| and q at most √max (≈ 1.8e19 in float32), whose products and squares in the
    mappings' gradients stay finite (exp(θ) past log(max) would be inf, which every
    forward refuses as q, and q = 1e38 would give NaN gradients)."""
    return low, math.log(torch.finfo(log_value.dtype).max) / 2


def _reset(module: _Mapping, name: str) -> None:
    parameter = getattr(module, name, None)
    if isinstance(parameter, nn.Parameter) and hasattr(module, "_initial"):
        with torch.no_grad():
            parameter.copy_(module._initial)


def _read_only(module: _Mapping, name: str, stored: str) -> None:
    raise AttributeError(
        f"{type(module).__name__}.{name} is read-only: build a new module (a fixed value is a "
        f"hyperparameter), or write a learnable one's {stored} under torch.no_grad()"
    )


class _LamMapping(_ParameterMapping):
    parameter, symbol, learnt_name = "lam", "λ", "log_one_minus_lam"
    default = 0.0

    @_ambiguous_int_first
    def __init__(
        self, lam: ParameterLike = default, dim: int = -1, learnable: bool = False
    ) -> None:
        super().__init__(dim)
        lam = check_lam(_given_values(lam, type(self).__name__, "lam"), type(self).__name__)
        self.learnable = _check_learnable(learnable, type(self).__name__)
        if not isinstance(lam, torch.Tensor) and not learnable:
            # a hyperparameter, like a float q: exact in every dtype, and not state
            self.fixed_lam = lam
            return
        # log(1 − λ) in float64 (λ = 1 − 1e-8 rounds to 1 in float32), on the CPU under any
        # default device
        log_gap = torch.log1p(-_on_cpu(lam))
        if learnable and not bool(torch.isfinite(log_gap).all()):
            raise ValueError(f"{type(self).__name__}: a learnable lam must start finite and < 1")
        if learnable:
            self.log_one_minus_lam = _learnable(self, log_gap)
            self.reset_parameters()
        else:  # held as log(1 − λ), so that no dtype rounds λ to 1
            self._fix("log_one_minus_lam", log_gap)

    @property
    def lam(self) -> torch.Tensor | float:
        """The fixed value given as a number; else ``λ = 1 − exp(ρ)``, always < 1:
        computed in float32 at least (in a half type λ rounds: 0.998 to 0.996 in
        bfloat16, 0.9998 to 1 in float16) from ``ρ ≥ log(eps)``, so that however far
        training pushes ``ρ`` (a float32 ``ρ ≤ −17`` would round λ to 1), ``1 − λ`` stays at
        least the dtype's epsilon."""
        return self._lam_for(None)

    @lam.setter
    def lam(self, value: Any) -> None:
        _read_only(self, "lam", "log_one_minus_lam")

    def _lam_for(self, x: Any) -> torch.Tensor | float:
        """λ for the input ``x``: computed in its compute dtype where that is wider (a
        float64 input takes a λ within float32's rounding of 1 as it is, from a float32
        ``ρ``; a narrower input's cast leaves it below 1: ``_validation.slice_lam``)."""
        if not hasattr(self, "log_one_minus_lam"):
            return self.fixed_lam
        rho = self.log_one_minus_lam
        dtype = compute_dtype(rho.dtype)
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            dtype = torch.promote_types(dtype, compute_dtype(x.dtype))
        rho = rho.to(dtype)
        return -torch.expm1(held(rho, *_bounds(rho, math.log(torch.finfo(rho.dtype).eps))))

    def _from_learnt(self, saved: torch.Tensor) -> torch.Tensor:
        return -torch.expm1(saved)

    def _set_fixed(self, value: torch.Tensor | float) -> None:
        lam = check_lam(value, type(self).__name__)
        if isinstance(lam, torch.Tensor):
            self._fix("log_one_minus_lam", torch.log1p(-lam))
        else:
            self.fixed_lam = lam

    def reset_parameters(self) -> None:
        """A learnable λ back to its initial value (after ``meta`` and ``to_empty``)."""
        _reset(self, "log_one_minus_lam")

    def _value_for(self, x: torch.Tensor) -> torch.Tensor | float:
        return self._lam_for(x)

    def extra_repr(self) -> str:
        return f"lam={_shown(self.lam)}, dim={self.dim}, learnable={self.learnable}"


class SparsegenLin(_LamMapping):
    """Module form of :func:`sparsegen.sparsegen_lin` (learnable ``lam`` optional)."""

    function = staticmethod(F.sparsegen_lin)


class SparsegenExp(_LamMapping):
    """Module form of :func:`sparsegen.sparsegen_exp` (learnable ``lam`` optional)."""

    function = staticmethod(F.sparsegen_exp)


class SparsegenSq(_LamMapping):
    """Module form of :func:`sparsegen.sparsegen_sq` (learnable ``lam`` optional)."""

    function = staticmethod(F.sparsegen_sq)


class _QMapping(_ParameterMapping):
    parameter, symbol, learnt_name = "q", "q", "log_q"
    default = 1.0

    @_ambiguous_int_first
    def __init__(self, q: ParameterLike = default, dim: int = -1, learnable: bool = False) -> None:
        super().__init__(dim)
        q = check_q(_given_values(q, type(self).__name__, "q"), type(self).__name__)
        self.learnable = _check_learnable(learnable, type(self).__name__)
        if not learnable and isinstance(q, torch.Tensor):
            self._fix("fixed_q", q)
        elif not learnable:
            self.fixed_q = q
        elif isinstance(q, torch.Tensor) and bool((q > 0).all()):
            self.log_q = _learnable(self, q.log())
        elif isinstance(q, float) and 0 < q < math.inf:
            self.log_q = _learnable(self, _on_cpu(math.log(q)))
        else:
            raise ValueError(f"{type(self).__name__}: a learnable q must start finite and > 0")
        if learnable:
            self.reset_parameters()

    @property
    def q(self) -> torch.Tensor | float:
        """``q = exp(θ)`` when learnable (held at the dtype's smallest normal at least, so
        > 0; in float32 at least, as λ: in float16 q = 1e5 is inf), else the fixed value: a
        hyperparameter, like a module's float options in torch, so not in the state dict
        (a per-slice tensor is a buffer that ``.to()`` moves, kept in float32 at least)."""
        if not self.learnable:
            return self.fixed_q
        theta = self.log_q.to(compute_dtype(self.log_q.dtype))
        # held above log(tiny): exp(θ) underflows to 0 for θ ≤ −104 in float32, and
        # sparsecone's domain cannot take q = 0
        return held(theta, *_bounds(theta, math.log(torch.finfo(theta.dtype).tiny))).exp()

    @q.setter
    def q(self, value: Any) -> None:
        _read_only(self, "q", "log_q")

    def reset_parameters(self) -> None:
        """A learnable q back to its initial value (after ``meta`` and ``to_empty``)."""
        _reset(self, "log_q")

    def _from_learnt(self, saved: torch.Tensor) -> torch.Tensor:
        return saved.exp()

    def _set_fixed(self, value: torch.Tensor | float) -> None:
        q = check_q(value, type(self).__name__)
        if isinstance(q, torch.Tensor):
            self._fix("fixed_q", q)
        else:
            self.fixed_q = q

    def _value_for(self, x: torch.Tensor) -> torch.Tensor | float:
        return self.q

    def extra_repr(self) -> str:
        return f"q={_shown(self.q)}, dim={self.dim}, learnable={self.learnable}"


class Sparsecone(_QMapping):
    """Module form of :func:`sparsegen.sparsecone` (learnable ``q`` optional)."""

    function = staticmethod(F.sparsecone)


class Sparsehourglass(_QMapping):
    """Module form of :func:`sparsegen.sparsehourglass` (learnable ``q`` optional)."""

    function = staticmethod(F.sparsehourglass)


MAPPINGS: dict[str, type[_Mapping]] = {
    "softmax": Softmax,
    "sparsemax": Sparsemax,
    "sparsegen_lin": SparsegenLin,
    "sparsegen_exp": SparsegenExp,
    "sparsegen_sq": SparsegenSq,
    "sparsecone": Sparsecone,
    "sparsehourglass": Sparsehourglass,
    "sum_normalization_pp": SumNormalizationPP,
    "sum_normalization": SumNormalization,
    "spherical_softmax": SphericalSoftmax,
    "hardmax": Hardmax,
}
"""Every mapping's module by the name that ``mapping=`` takes (:func:`mapping_module`)."""


class _CallableMapping(NotScriptable, nn.Module):
    """A mapping given as a function ``f(x, dim=..., mask=...)``, e.g. a ``functools.partial``."""

    def __init__(self, function: Callable[..., torch.Tensor], dim: int) -> None:
        super().__init__()
        self.function = function
        self.dim = dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.function(x, dim=self.dim, mask=mask)

    def extra_repr(self) -> str:
        return f"function={self.function!r}, dim={self.dim}"


def mapping_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The learnt parameters of every mapping module in ``module`` (``learnable=True``:
    ``log(1 − λ)`` and ``log q``), each once.

    For an optimizer group of their own without weight decay: decay pulls them towards
    0, that is ``λ`` towards 0 (sparsemax) and ``q`` towards 1, whatever the data says::

        learnt = sg.nn.mapping_parameters(model)
        others = [p for p in model.parameters() if all(p is not m for m in learnt)]
        groups = [{"params": others}, {"params": learnt, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.01)
    """
    found = {}
    for part in module.modules():
        if isinstance(part, _Mapping):
            found.update((id(p), p) for p in part.parameters())  # (parametrized: a child's)
    return list(found.values())


def mapping_module(
    mapping: str | Callable[..., torch.Tensor] | nn.Module | type[nn.Module],
    *,
    lam: ParameterLike | None = None,
    q: ParameterLike | None = None,
    learnable: bool = False,
    parameter_shape: tuple[int, ...] = (),
    dim: int = -1,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """The module ``forward(x, mask=None)`` for a mapping given by name, function or module.

    Parameters
    ----------
    mapping : str, callable or nn.Module
        A name of :data:`MAPPINGS` (``"softmax"``, ``"sparsemax"``,
        ``"sparsegen_lin"``, ``"sparsehourglass"``, …; ``-`` may replace ``_``),
        one of the library's functions (``sparsegen.sparsemax``, …) or module classes
        (``sparsegen.nn.SparsegenLin``), a module (used as it is) or any callable
        ``f(x, dim=dim, mask=mask)`` such as
        ``functools.partial(sparsegen.sparsegen_lin, lam=0.5)``.
    lam, q : float or Tensor, optional
        The mapping's parameter, for a name or library function that has one
        (``ValueError`` for one that has not). Defaults: ``lam = 0``, ``q = 1``.
    learnable : bool
        Make the parameter an ``nn.Parameter``.
    parameter_shape : tuple of int
        Expand a number ``lam`` / ``q`` to a tensor of this shape, e.g.
        ``(num_heads, 1, 1)`` for one value per attention head (``ValueError`` for a
        mapping without a parameter of the library's).
    dim : int
        The dimension the mapping normalises.
    device, dtype : optional
        Where a parameter the module holds is made, as torch modules' factory arguments
        (a module given is used as it is).
    """
    if isinstance(mapping, nn.Module) and parameter_shape:
        raise ValueError(
            "mapping_module: parameter_shape (one value per head: per_head=True in the "
            "attention modules) is made for a mapping given by name or function; give "
            f"{mapping!r} its values yourself (e.g. a (num_heads, 1, 1) tensor)"
        )
    if parameter_shape and _mapping_parameter(mapping) is None:
        raise ValueError(
            "mapping_module: parameter_shape (one value per head: per_head=True in the "
            "attention modules) needs a mapping whose parameter the library holds (lam or "
            f"q); {mapping!r} has none"
        )
    if isinstance(mapping, nn.Module):
        if lam is not None or q is not None or learnable:
            raise ValueError(
                "mapping_module: a module mapping is used as it is; set lam/q/learnable on "
                "the module itself"
            )
        return mapping
    cls = _mapping_class(mapping)
    if cls is None:
        if lam is not None or q is not None or learnable:
            raise ValueError(
                f"mapping_module: lam/q/learnable apply to the library's mappings, not to "
                f"{mapping!r}; bind its parameters yourself (functools.partial)"
            )
        return _CallableMapping(mapping, dim)
    given = {"lam": lam, "q": q}
    own = getattr(cls, "parameter", None)
    for name, value in given.items():
        if value is not None and name != own:
            raise ValueError(f"{cls.__name__} takes no {name}")
    if own is None:
        if learnable:
            raise ValueError(f"{cls.__name__} has no parameter to learn")
        return cls(dim=dim)
    value = given[own] if given[own] is not None else cls.default
    if parameter_shape:
        value = _shaped(_values(value), parameter_shape, own)
    module = cls(**{own: value}, dim=dim, learnable=learnable)
    return module if device is None and dtype is None else module.to(device=device, dtype=dtype)


def _shaped(value: Any, shape: tuple[int, ...], name: str) -> Any:
    """:func:`_values`' ``value`` as a float64 tensor of ``shape`` (one value per head): a
    number or a single value repeated, or as many values as the shape holds, in order
    (``(H,)`` for ``(H, 1, 1)``); other tensors are refused, naming the shape."""
    if isinstance(value, float):  # on the CPU under any device, as _values makes them
        return torch.full(shape, value, dtype=torch.float64, device="cpu")
    if not isinstance(value, torch.Tensor):
        return value  # (the module's check names its type)
    if value.numel() == 1:  # (from _values: a detached float64 CPU copy already)
        return value.reshape(()).expand(shape).clone()
    if value.numel() != math.prod(shape):
        raise ValueError(
            f"mapping_module: {name} holds one value per head here, shape {shape}; got "
            f"shape {tuple(value.shape)}"
        )
    return value.reshape(shape)


def mapping_name(mapping: str | Callable[..., torch.Tensor] | type) -> str | None:
    """The :data:`MAPPINGS` key of a mapping given by name (any case, ``-`` for ``_``), by
    library function (``sparsegen.sparsemax``) or by module class (``sparsegen.nn.Sparsemax``);
    None for any other callable; ``TypeError`` for another module class, ``ValueError`` for
    an unknown name."""
    cls = _mapping_class(mapping)
    return None if cls is None else next(key for key, c in MAPPINGS.items() if c is cls)


def _mapping_parameter(mapping: str | Callable[..., torch.Tensor]) -> str | None:
    """The name of the parameter (``"lam"``, ``"q"``) of a mapping given by name or library
    function, or None."""
    return getattr(_mapping_class(mapping), "parameter", None)


def mapping_key(name: str) -> str:
    """A mapping's name as :data:`MAPPINGS` keys it: any case, ``-`` for ``_``."""
    return name.lower().replace("-", "_")


def _mapping_class(mapping: str | Callable[..., torch.Tensor]) -> type[_Mapping] | None:
    if isinstance(mapping, str):
        key = mapping_key(mapping)
        if key not in MAPPINGS:
            raise ValueError(
                f"unknown mapping {mapping!r}; choose one of {', '.join(MAPPINGS)} "
                "or pass a callable"
            )
        return MAPPINGS[key]
    if not callable(mapping):
        raise TypeError(
            f"mapping must be a name, a callable or a module; got {type(mapping).__name__}"
        )
    if isinstance(mapping, type) and issubclass(mapping, nn.Module):
        if mapping in MAPPINGS.values():  # as its name: sg.nn.SparsegenLin, lam=0.5
            return mapping
        raise TypeError(
            f"mapping: pass a module, {mapping.__name__}(...), not its class (a class is "
            "taken only for the library's mappings)"
        )
    for cls in MAPPINGS.values():
        if cls.function is mapping:
            return cls
    return None


def __getattr__(name: str) -> Any:  # the old names (SparseCone, …), deprecated: see _deprecated
    return _deprecated.resolve(__name__, globals(), name)
