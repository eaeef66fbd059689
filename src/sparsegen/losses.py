r"""Losses of both papers, for PyTorch (autograd) and NumPy (value and gradient).

Scores ``z`` are ``(..., K)``, the classes along the last dimension (where
``torch.nn.functional.cross_entropy`` takes them along dim 1: pass ``z.movedim(1, -1)``
for its ``(N, K, d₁, …)`` layout). Targets are either
class indices (``(...)`` integer tensor, for the single-label losses) or a
``(..., K)`` 0/1 label matrix ``y``; multi-label losses use the target
distribution ``η = y / ‖y‖₁`` (Martins & Astudillo's ``q``). Class indices
must be an integer tensor (as for ``torch.nn.functional.cross_entropy``). The
hinge losses need 0/1 labels and ``logistic_loss`` labels in ``[0, 1]``; other
labels raise ``ValueError``. A row with no
label has no such distribution: ``softmax_loss`` and ``sparsemax_loss`` raise
``ValueError`` for it, and the hinge losses give it zero loss (both of their
sums are empty); the classifiers drop such rows with a warning, as the papers'
scripts did. Labels must be finite: a NaN or infinite label raises ``ValueError``.

``reduction`` is ``"mean"`` (over rows, the default), ``"sum"`` or ``"none"``.
Over an empty batch ``"mean"`` is NaN (0/0, as ``torch.nn.functional.cross_entropy``)
and ``"sum"`` is 0, here and in :func:`loss_and_gradient`.

``-inf`` scores are allowed where the target puts no mass (masked classes):
the losses stay finite there, and are ``inf`` if a label has score ``-inf``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sparsegen._projection import plain_eager, reads_for_free, slice_scale
from sparsegen._validation import (
    Parameter,
    check_dense,
    check_int,
    check_values,
    compute_dtype,
    from_numpy,
    known_within,
    moved,
    slice_lam,
    slice_q,
)
from sparsegen.functional import sparsemax

__all__ = [
    "logistic_loss",
    "loss_and_gradient",
    "softmax_loss",
    "sparsegen_lin_hinge_loss",
    "sparsehourglass_hinge_loss",
    "sparsemax_loss",
]

REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise reduction_error(reduction)


def reduction_error(reduction: object, owner: str = "") -> ValueError:
    """The error for a ``reduction`` that is none of :data:`REDUCTIONS` (``owner``, a loss
    module, named first)."""
    prefix = f"{owner}: " if owner else ""
    return ValueError(f"{prefix}reduction must be one of {REDUCTIONS}; got {reduction!r}")


def _check_scores(z: torch.Tensor, name: str) -> None:
    if not isinstance(z, torch.Tensor) or not z.is_floating_point():
        raise TypeError(f"{name}: scores must be a floating-point tensor")
    check_dense(z, name)
    if z.ndim == 0:
        raise ValueError(f"{name}: scores need a class dimension")


def _forward_strides(value: Any, dtype: Any = None) -> np.ndarray:
    """``value`` as an array that torch takes: copied if a stride is negative (views such
    as ``Y[:, ::-1]``, which torch refuses); 0-d stays 0-d (``np.ascontiguousarray``
    would make it 1-d)."""
    array = np.asarray(value, dtype=dtype)
    return array.copy() if any(stride < 0 for stride in array.strides) else array


def _numeric(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` if it holds numbers or booleans (an object array, from a list holding None
    or a mixed-type ``DataFrame.values``, is a ``TypeError`` naming the loss)."""
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"{name}: target must hold numbers (or booleans); got an array of dtype {array.dtype}"
        )
    return array


def _as_target(target: Any, z: torch.Tensor, name: str) -> torch.Tensor:
    """A target tensor on the scores' device; NumPy arrays (and lists) are converted."""
    if isinstance(target, (np.ndarray, list, tuple)):  # (a tuple of types: dynamo traces it)
        target = from_numpy(_numeric(_forward_strides(target), name))
    if not isinstance(target, torch.Tensor):
        raise TypeError(
            f"{name}: target must be a tensor or a NumPy array; got {type(target).__name__}"
        )
    return moved(target, z.device, what=f"{name}: the target")


def _class_index(z: torch.Tensor, target: torch.Tensor, name: str) -> torch.Tensor:
    """Class indices (an integer tensor of ``z``'s batch shape) checked to lie in ``[0, K)``,
    as int64."""
    k = z.shape[-1]
    # (the traced rule leaves K out: formatting a dynamic K would fix it to one value)
    rule = f"{name}: class indices must lie in [0, K), K the scores' last dimension"
    message = lambda: f"{name}: class indices must lie in [0, {k})"  # noqa: E731
    check_values((target >= 0) & (target < k), ValueError, message, rule)
    # clamped (a no-op once checked) so that under torch.compile the check's assertion, not
    # the gather's own bounds check, reports an index out of range
    return target.long().clamp(0, k - 1)


def _target_distribution(z: torch.Tensor, target: torch.Tensor, name: str) -> torch.Tensor:
    """``η``: ``y / ‖y‖₁`` for a label matrix (class indices take their own formulas)."""
    target = _as_target(target, z, name)
    if target.shape == z.shape[:-1]:  # floating, so not class indices
        raise ValueError(
            f"{name}: class indices must be an integer tensor; got {target.dtype} "
            "(cast them with .long(), or pass labels of the scores' shape)"
        )
    if target.shape != z.shape:
        torch_layout = z.ndim > 2 and target.shape == (z.shape[0], *z.shape[2:])
        raise ValueError(
            f"{name}: target must be class indices of shape {tuple(z.shape[:-1])} or labels "
            f"of the scores' shape {tuple(z.shape)}; got {tuple(target.shape)}"
            + (
                " (the classes are along the scores' last dimension, not along dim 1 as "
                "in cross_entropy: pass z.movedim(1, -1))"
                if torch_layout
                else ""
            )
        )
    # normalised in float32 at least, then cast: float16 labels summing past 65,504 would
    # make ‖y‖₁ inf and η zero
    wide = compute_dtype(z.dtype)
    if target.is_floating_point():
        wide = torch.promote_types(wide, target.dtype)
    y = target.to(wide)
    if not known_within(y, 0.0, math.inf):
        y = _non_negative(_finite(y, name), name)
    mass = y.sum(-1, keepdim=True)
    rule = (
        f"{name}: a row with no label (or label weights summing past the dtype's range) has "
        "no target distribution y/‖y‖₁; drop such rows (or scale the weights down)"
    )
    check_values(
        (mass != 0) & (mass != math.inf),
        ValueError,
        lambda: _mass_message(name, mass),
        rule,
    )
    return (y / mass).to(z.dtype)


def _mass_message(name: str, mass: torch.Tensor) -> str:
    """What is wrong with the rows whose label weights give no target distribution."""
    if bool((mass == 0).any()):
        return (
            f"{name}: {int((mass == 0).sum())} row(s) have no label, so no target "
            "distribution y/‖y‖₁; drop them first"
        )
    return (
        f"{name}: the label weights of {int((mass == math.inf).sum())} row(s) sum past "
        f"{mass.dtype}'s range, which leaves no target distribution y/‖y‖₁; scale them down"
    )


def _finite(y: torch.Tensor, name: str) -> torch.Tensor:
    rule = f"{name}: labels must be finite (no NaN or infinity)"
    check_values(
        torch.isfinite(y),
        ValueError,
        lambda: (
            f"{name}: labels must be finite; got {int(y.isnan().sum())} NaN and "
            f"{int(y.isinf().sum())} infinite label(s)"
        ),
        rule,
    )
    return y


def _non_negative(y: torch.Tensor, name: str) -> torch.Tensor:
    rule = f"{name}: labels must be non-negative"
    check_values(~(y < 0), ValueError, lambda: rule, rule)
    return y


def _in_unit_interval(y: torch.Tensor, name: str) -> torch.Tensor:
    rule = f"{name}: labels must lie in [0, 1] (each is a probability of the label)"
    check_values((y >= 0) & (y <= 1), ValueError, lambda: rule, rule)
    return y


def _binary(y: torch.Tensor, name: str) -> torch.Tensor:
    rule = (
        f"{name}: labels must be 0 or 1 (the hinge is zero at the mapping's output only "
        "for y/‖y‖₁ uniform on the label set; use sparsemax_loss for soft targets)"
    )
    check_values((y == 0) | (y == 1), ValueError, lambda: rule, rule)
    return y


def _dot_where_mass(weights: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``Σ_j w_j z_j`` with ``0 · (−inf)`` taken as 0 (classes the target ignores).

    The score is replaced where the weight is 0, not the product: the product's
    derivative in ``w`` would still be ``z = −inf`` there (NaN through the where)."""
    return (weights * torch.where(weights == 0, 0.0, z)).sum(-1)


def _shifted(z: torch.Tensor, at_limit: bool = False) -> torch.Tensor:
    """``z`` less each slice's maximum where that is finite (else 0: a slice with +inf or
    only −inf scores keeps them), a constant to autograd. The losses computed from it are
    the same numbers (each is unchanged by adding a constant to a slice's scores), without
    cancelling digits of the scores' magnitude: sums of large scores weighted to nothing
    would leave float32 losses of scores near 1e4 wrong by 1% (and sparsemax's below 0).
    Half types are shifted in float32, as the mappings compute them.

    ``at_limit``: a slice whose maximum is +inf (and that holds no NaN) takes its limit
    scores instead, 0 at the +inf scores and -inf at the others, constants to autograd. As
    those scores grow they share the mass, as in every mapping, and the softmax and
    sparsemax losses tend to their values there (``KL(η‖p)``, ``½‖η − p‖²``; +inf where η
    has mass elsewhere), which ``inf − inf`` would make NaN; the finite scores' gradient
    ``p − η`` is 0 wherever that loss is finite."""
    if z.shape[-1] == 0:
        return z
    z = z.to(compute_dtype(z.dtype))  # (float16 scores 40,000 apart differ by inf in float16)
    top = z.detach().amax(-1, keepdim=True)
    shifted = z - torch.where(top.isfinite(), top, 0.0)
    return _at_limit(shifted, top) if at_limit else shifted


def _at_limit(z: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """``z`` with :func:`_shifted`'s limit scores in the slices whose maximum ``top`` is
    +inf; ``z`` itself where no slice's is, told at no cost (on the CPU, in eager mode):
    the scores are not read again for them."""
    infinite = top == math.inf
    if reads_for_free(infinite) and not bool(infinite.any()):
        return z
    limit = torch.where(z == math.inf, 0.0, -math.inf).to(z.dtype)
    return torch.where(infinite, limit, z)


def _neg_entropy(eta: torch.Tensor) -> torch.Tensor:
    """``Σ_j η_j log η_j`` with ``0 log 0 = 0``; its derivative at ``η_j = 0`` is taken
    as 0 (it is −inf). The log sees 1 there: ``log 0`` would make the where's unused
    branch ``0 · (−inf)``, NaN in the backward, which ``y/‖y‖₁`` spreads over the row."""
    has_mass = eta > 0
    return torch.where(has_mass, eta * torch.log(torch.where(has_mass, eta, 1.0)), 0.0).sum(-1)


def _by_target(
    values: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    target: Any,
    reduction: str,
    ignore_index: int,
    name: str,
) -> torch.Tensor:
    """``values(z, target)`` reduced, ``target`` the distribution ``η`` or class indices
    (int64), which each loss computes by its own formula (a one-hot ``η`` would cost
    passes over ``(…, K)`` that a gather does not); with class indices, the slices whose
    target is ``ignore_index`` add nothing and ``"mean"`` averages over the others."""
    _check_scores(z, name)
    ignore_index = check_int(ignore_index, f"{name}: ignore_index")
    target = _as_target(target, z, name)  # (NumPy class indices ignore too)
    # (booleans of the batch shape are no class indices, as for cross_entropy: a mask or
    # flag passed by mistake; _target_distribution says so)
    is_index = not target.is_floating_point() and target.dtype != torch.bool
    if is_index and target.shape == z.shape[:-1]:  # no data-dependent branch: compiles whole
        target = target.long()  # (in uint8, ignore_index -100 would be 156, a class)
        keep = target != ignore_index
        index = _class_index(z, torch.where(keep, target, 0), name)
        loss = torch.where(keep, values(z, index), 0.0)
        if reduction == "mean":
            # summed in float32 at least, as torch's mean accumulates: a float16 sum of
            # 70,000 losses of 2.7 is inf
            total = loss.sum(dtype=compute_dtype(loss.dtype))
            return (total / keep.sum()).to(loss.dtype)
        return _reduce(loss, reduction)
    # (computed in float32 for a half type, returned in it, as the mappings are)
    return _reduce(values(z, _target_distribution(z, target, name)).to(z.dtype), reduction)


def _at(z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``z[..., index]`` slice by slice: each class index's score."""
    return z.gather(-1, index.unsqueeze(-1)).squeeze(-1)


def _softmax_loss_values(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if not target.is_floating_point():  # η = δ_k: log Σ_j exp(z_j) − z_k, shifted by z_k
        z_k = _at(z, target)
        if not (reads_for_free(z_k) and bool((z_k < math.inf).all())):
            # (a +inf class score: its slice's limit, as the labels' path takes it)
            z = _at_limit(z, z.detach().amax(-1, keepdim=True))
            z_k = _at(z, target)
        shift = torch.where(z_k.isfinite(), z_k, 0.0).detach().unsqueeze(-1)
        return torch.logsumexp(z - shift, -1) - (z_k - shift.squeeze(-1))
    z = _shifted(z, at_limit=True)
    if not target.requires_grad and not torch.compiler.is_compiling() and plain_eager(z, target):
        # A constant target: 0 log 0 and 0 · (±inf) taken as 0 by xlogy and nansum, one
        # pass each where the wheres take several (their derivatives in η would be NaN
        # there, which nothing asks for; a NaN score's slice stays NaN by its logsumexp)
        entropy = torch.special.xlogy(target, target).sum(-1)
        return entropy - torch.nansum(target * z, -1) + torch.logsumexp(z, -1)
    return _neg_entropy(target) - _dot_where_mass(target, z) + torch.logsumexp(z, -1)


def softmax_loss(
    z: torch.Tensor, target: torch.Tensor, reduction: str = "mean", ignore_index: int = -100
) -> torch.Tensor:
    r"""Softmax cross-entropy, or KL divergence to the target distribution.

    $$
    L(z; \eta) = \mathrm{KL}(\eta \,\|\, \mathrm{softmax}(z))
    = -H(\eta) - \eta^\top z + \log\textstyle\sum_j e^{z_j}
    $$

    With class indices ``η = δ_k`` and this is ``−z_k + log Σ_j exp z_j``.
    Gradient ``softmax(z) − η``. A target that requires grad gets
    ``∂L/∂η_j = log η_j + 1 − z_j`` (through ``η = y/‖y‖₁``); where ``η_j = 0``,
    where that derivative is −inf, the entropy's part is taken as 0, so the rest of
    the row stays finite. With class indices, slices whose target is
    ``ignore_index`` add nothing and get no gradient, as in
    ``torch.nn.CrossEntropyLoss``; ``"mean"`` averages over the others. Unlike it, the
    classes are along the last dimension (``z.movedim(1, -1)`` for its layout), and soft
    labels give the KL divergence (cross-entropy less ``H(η)``), renormalised to sum to 1.
    """
    return _by_target(_softmax_loss_values, z, target, reduction, ignore_index, "softmax_loss")


def logistic_loss(z: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    r"""Independent binary logistic losses, summed over the K labels.

    $$
    L(z; y) = \sum_j \log(1 + e^{z_j}) - y_j z_j
    $$

    Labels must lie in ``[0, 1]`` (``ValueError`` otherwise): outside, the loss is
    unbounded below.
    """
    _check_scores(z, "logistic_loss")
    y = _as_target(y, z, "logistic_loss")
    if y.shape != z.shape:
        raise ValueError(
            f"logistic_loss: labels must have the scores' shape {tuple(z.shape)}; "
            f"got {tuple(y.shape)}"
        )
    # y softplus(−z) + (1 − y) softplus(z): a -inf score of a non-label (or +inf of a label)
    # costs exactly 0, not 0 · inf. The softplus is replaced there, not the product, whose
    # derivative in y (softplus(−z) − softplus(z) = −z) the labels' gradient needs.
    y = y.to(z.dtype)
    if not known_within(y, 0.0, 1.0):
        y = _in_unit_interval(_finite(y, "logistic_loss"), "logistic_loss")
    label_term = torch.where((y == 0) & (z == -math.inf), 0.0, F.softplus(-z))
    other_term = torch.where((y == 1) & (z == math.inf), 0.0, F.softplus(z))
    loss = y * label_term + (1 - y) * other_term
    return _reduce(loss.sum(-1), reduction)


def _target_gradient(z: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """``∂L/∂η = η − z``, 0 for a class out of the target with a −inf score (as the loss
    takes ``0 · (−inf)`` as 0: the class is absent)."""
    return torch.where((eta == 0) & (z == -torch.inf), 0.0, eta - z)


def _sparsemax_index_loss(
    z: torch.Tensor, p: torch.Tensor, tau: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    """``L(z; δ_k) = ½‖p‖² + ½ + τ − z_k``: ``(p − δ_k)ᵀz − ½‖p‖² + ½`` with ``pᵀz = ‖p‖² + τ``
    (``p = z − τ`` on the support, summing to 1), one pass where the one-hot formula takes
    five.

    ``τ − z_k`` is ``−p_k`` where ``k`` is in the support: exactly 0 loss where ``p = δ_k``
    whatever the scores' magnitude (elsewhere it keeps ``τ``'s rounding to the scores'
    magnitude, as the output does). The one-hot formula's values where scores are
    infinite: a −inf target score costs inf, also in a slice of −inf only (where
    ``τ − z_k`` is NaN); a +inf target score, in the support, gives the limit
    ``½‖p − δ_k‖²`` (:func:`_shifted`'s), and a finite one beside +inf scores inf."""
    p_k, z_k = _at(p, index), _at(z, index)
    beyond = torch.where(z_k == -torch.inf, torch.inf, tau.to(z.dtype) - z_k)
    gap = torch.where(p_k > 0, -p_k, beyond)
    return 0.5 * (p * p).sum(-1) + 0.5 + gap


def _gradient(grad: torch.Tensor, p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``grad · (p − η)``, ``η`` a distribution or class indices' one-hot (subtracted by
    a scatter: none is built)."""
    g = grad.unsqueeze(-1)
    if target.is_floating_point():
        return g * (p - target)
    return (p * g).scatter_add_(-1, target.unsqueeze(-1), -g)


class _SparsemaxLoss(torch.autograd.Function):
    """``L(z; η) = (p − η)ᵀz − ½‖p‖² + ½‖η‖²`` with ``p = sparsemax(z)``; ``∇L = p − η``;
    ``η`` a distribution, or class indices (:func:`_sparsemax_index_loss`).
    Returns ``(L, p)``; a separate ``setup_context`` (and the vmap rule torch derives) lets
    ``torch.func`` transform it: per-sample gradients of the loss. Its second derivative,
    the Jacobian of sparsemax, comes from ``p`` recomputed in a recorded backward
    (double backward) and from the forward mode of :class:`_SparsemaxLossWithJvp`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z, target):
        if not target.is_floating_point():
            p, tau, _ = sparsemax(z, dim=-1, return_info=True)
            return _sparsemax_index_loss(z, p, tau, target), p
        p, eta = sparsemax(z, dim=-1), target
        # Σ(p − η)z̃ (Σ(p − η) = 0), 0 · (±inf) taken as 0 as in _dot_where_mass: nansum
        # drops those products' NaN, in one pass where the where takes three (a slice
        # with a NaN score stays NaN: its p, and so ‖p‖², is NaN)
        pairs = torch.nansum((p - eta) * _shifted(z, at_limit=True), -1)
        loss = pairs - 0.5 * (p * p).sum(-1) + 0.5 * (eta * eta).sum(-1)
        return loss, p

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, target = inputs
        _, p = output
        ctx.mark_non_differentiable(p)
        ctx.set_materialize_grads(False)  # (p's gradient: None, not a tensor of zeros)
        ctx.save_for_backward(z, p, target)
        ctx.save_for_forward(z, p, target)

    @staticmethod
    def backward(ctx, grad, _grad_p):
        z, p, target = ctx.saved_tensors
        if grad is None:
            return None, None
        if torch.is_grad_enabled():  # recorded: ∇L = p(z) − η as a function of z
            p = sparsemax(z, dim=-1)
        grad_eta = (
            grad.unsqueeze(-1) * _target_gradient(z, target) if ctx.needs_input_grad[1] else None
        )
        return _gradient(grad, p, target), grad_eta


class _SparsemaxLossWithJvp(_SparsemaxLoss):
    """The same, with forward mode (``jvp``, ``jacfwd``, ``hessian``), outside
    ``torch.compile``: dynamo does not trace a Function that defines ``jvp``."""

    @staticmethod
    def jvp(ctx, z_tangent, target_tangent):
        z, p, target = ctx.saved_tensors
        tangent = 0.0
        if z_tangent is not None and target.is_floating_point():
            tangent = _dot_where_mass(p - target, z_tangent)
        elif z_tangent is not None:
            tangent = _dot_where_mass(p, z_tangent) - _at(z_tangent, target)
        if target_tangent is not None:
            tangent = tangent + (target_tangent * _target_gradient(z, target)).sum(-1)
        return tangent + torch.zeros_like(z[..., 0]), None  # (p is not differentiable)


def _sparsemax_loss_values(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    compiling = torch.compiler.is_compiling()
    return (_SparsemaxLoss if compiling else _SparsemaxLossWithJvp).apply(z, target)[0]


def sparsemax_loss(
    z: torch.Tensor, target: torch.Tensor, reduction: str = "mean", ignore_index: int = -100
) -> torch.Tensor:
    r"""The sparsemax loss (Martins & Astudillo 2016), "sparsemax+huber" in Laha et al.

    $$
    L(z; \eta) = -\eta^\top z + \tfrac12 \sum_{j\in S(z)} (z_j^2 - \tau(z)^2)
    + \tfrac12 \lVert\eta\rVert^2
    $$

    Convex, ≥ 0, zero iff ``sparsemax(z) = η``; gradient ``sparsemax(z) − η``.
    Computed as ``(p − η)ᵀz − ½‖p‖² + ½‖η‖²`` (the same number), which stays
    finite at ``−inf`` scores outside the target.

    ``target`` holds class indices (``η`` one-hot) or a multi-label 0/1 (or
    non-negative) matrix, normalised to the distribution ``η = y/‖y‖₁``: the
    papers' multi-label loss, not optax's binary ``sparsemax_loss`` of the
    same name (a per-label two-class loss). With class indices, slices whose
    target is ``ignore_index`` (as in ``torch.nn.CrossEntropyLoss``) add
    nothing and get no gradient; ``"mean"`` averages over the others.
    """
    return _by_target(_sparsemax_loss_values, z, target, reduction, ignore_index, "sparsemax_loss")


def _pairwise_hinge(
    z: torch.Tensor, y: torch.Tensor, margin: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    r"""``c Σ_{i,j∈P} |z_i − z_j| + Σ_{i∈P, j∈N} [c z_j − (c z_i − m_i)]_+`` per row, sorted.

    ``P`` = labels, ``N`` = the rest; pairs are ordered (each unordered pair of
    labels counts twice, as in the papers' sums). O(K log K): never K×K. ``scale``: a
    number, or one per row with ``keepdim`` (a tensor ``λ`` or ``q``). Computed in
    float32 at least, on the shifted scores (only differences of scores enter).
    """
    positive = y > 0
    c = scale
    # a NaN score, or a NaN margin (the NaN an invalid tensor parameter becomes where no
    # check can raise), makes the row NaN: searchsorted would place a NaN threshold past
    # every negative, and the spread's where would drop a NaN label's score, both as 0
    undefined = z.isnan().any(-1) | (positive & margin.isnan()).any(-1)
    z = _shifted(z.to(compute_dtype(z.dtype)))
    # Σ over ordered pairs of labels of |z_i − z_j| = 2 Σ_r (2r − n − 1) z_(r), z ascending.
    pos_sorted, _ = torch.sort(torch.where(positive, z, torch.inf), dim=-1)
    n_pos = positive.sum(-1, keepdim=True)
    rank = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    weight = torch.where(rank <= n_pos, 2 * rank - n_pos - 1, 0).to(z.dtype)
    spread = 2 * torch.where(weight == 0, 0.0, weight * pos_sorted).sum(-1, keepdim=True)
    # Σ_{i∈P} Σ_{j∈N} [c z_j − a_i]_+ with a_i = c z_i − m_i: negatives sorted once.
    neg = torch.where(positive, -torch.inf, c * z)
    neg_sorted, _ = torch.sort(neg, dim=-1, descending=True)
    prefix = torch.cumsum(torch.where(neg_sorted == -torch.inf, 0.0, neg_sorted), -1)
    prefix = torch.cat([torch.zeros_like(prefix[..., :1]), prefix], -1)
    a = c * z - margin
    ascending = torch.flip(neg_sorted, [-1]).contiguous()
    above = z.shape[-1] - torch.searchsorted(ascending, a.contiguous(), right=True)
    # no negative above: no violation, also where a is infinite (0 · inf would be NaN)
    violations = torch.where(above == 0, 0.0, prefix.gather(-1, above) - above * a)
    violations = torch.where(positive, violations, 0.0).sum(-1, keepdim=True)
    return torch.where(undefined, torch.nan, (c * spread + violations).squeeze(-1))


def _labels(z: torch.Tensor, y: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    _check_scores(z, name)
    y = _as_target(y, z, name)
    if y.shape != z.shape:
        raise ValueError(
            f"{name}: labels must have the scores' shape {tuple(z.shape)}; got {tuple(y.shape)}"
        )
    y = _binary(_finite(y.to(z.dtype), name), name)
    mass = y.sum(-1, keepdim=True)
    return y, y / torch.where(mass == 0, 1.0, mass)


def sparsegen_lin_hinge_loss(
    z: torch.Tensor, y: torch.Tensor, *, lam: Parameter = 0.0, reduction: str = "mean"
) -> torch.Tensor:
    r"""Laha et al.'s hinge loss for sparsegen-lin (Eq. 8); ``λ = 0`` is "sparsemax+hinge".

    $$
    L(z, \eta) = \frac{1}{1-\lambda}\sum_{i,j:\,\eta_i\ne0,\eta_j\ne0}|z_i-z_j|
    + \sum_{i,j:\,\eta_i\ne0,\eta_j=0}\max\left\{\eta_i-\frac{z_i-z_j}{1-\lambda},\,0\right\}
    $$

    Zero exactly when ``sparsegen_lin(z, λ) = η``, for 0/1 labels ``y`` (``η``
    uniform on the label set, as in the paper): other labels raise ``ValueError``.
    ``λ < 1``: a number, or a tensor of one value per row (shape ``(..., 1)``, which
    may require grad). Sort-based, O(K log K).
    """
    name = "sparsegen_lin_hinge_loss"
    y, eta = _labels(z, y, name)
    lam = slice_lam(lam, z, -1, name)
    return _reduce(_pairwise_hinge(z, y, eta, 1.0 / (1.0 - lam)).to(z.dtype), reduction)


def sparsehourglass_hinge_loss(
    z: torch.Tensor, y: torch.Tensor, *, q: Parameter = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    r"""Laha et al.'s hinge loss for sparsehourglass (Eq. 7).

    $$
    L(z, \eta) = \sum_{i,j:\,\eta_i\ne0,\eta_j\ne0}|z_i-z_j|
    + \sum_{i,j:\,\eta_i\ne0,\eta_j=0}\max\{\eta_i/\hat\alpha(z)-(z_i-z_j),\,0\},
    \quad \hat\alpha(z) = \frac{1+Kq}{|\sum_i z_i|+Kq}
    $$

    Zero exactly when ``sparsehourglass(z, q) = η``, for 0/1 labels ``y`` (``η``
    uniform on the label set, as in the paper): other labels raise ``ValueError``.
    ``q > 0``: a number, or a tensor of one value per row (shape ``(..., 1)``). Sort-based,
    O(K log K); gradients flow through ``α̂(z)``. Scores
    of ``-inf`` (masked classes) are left out of ``K`` and ``Σ z``: the loss is that of
    ``sparsehourglass(z, q=q, mask=z > -inf)``, where the mapping itself counts them in
    its sum.
    """
    name = "sparsehourglass_hinge_loss"
    y, eta = _labels(z, y, name)
    q = slice_q(q, z, -1, name, positive=True)  # (α̂ is 1/0 at q = 0 where Σz = 0)
    # -inf scores are masked classes: like sparsehourglass's mask, they are left
    # out of K and of Σz (q = inf: α̂ = 1, sparsemax's hinge).
    # (1/α̂ as a quotient of its own: through α̂, its gradient is NaN where α̂² underflows)
    inverse = slice_scale(z, q, mirror=True, mask=z > -torch.inf, reciprocal=True)
    return _reduce(_pairwise_hinge(z, y, eta * inverse, 1.0).to(z.dtype), reduction)


def loss_and_gradient(
    loss: Callable[..., torch.Tensor], z: np.ndarray, target: np.ndarray, **kwargs
) -> tuple[float, np.ndarray]:
    """A loss's value and its gradient with respect to the scores, for NumPy arrays.

    Computed in float64 by the torch implementation, but for the two hinge
    losses on plain input (2-D finite scores, 0/1 labels, a float
    parameter, ``reduction`` mean or sum), which a compiled kernel computes in
    one pass, several times faster: what L-BFGS training calls each iteration.
    Either way the numbers are the torch losses', an empty batch's NaN mean included.
    """
    if kwargs.get("reduction", "mean") not in ("mean", "sum"):
        raise ValueError(
            f"loss_and_gradient: reduction must be 'mean' or 'sum' (one value to "
            f"differentiate); got {kwargs['reduction']!r}"
        )
    z = _forward_strides(z, np.float64)
    compiled = _compiled_hinge(loss, z, target, kwargs)
    if compiled is not None:
        return compiled
    scores = torch.tensor(z, requires_grad=True)
    if not isinstance(target, torch.Tensor):
        name = getattr(loss, "__name__", "loss_and_gradient")
        target = from_numpy(_numeric(_forward_strides(target), name))
    value = loss(scores, target, **kwargs)
    (grad,) = torch.autograd.grad(value, scores)
    value = value.detach()
    return value.item(), grad.numpy()


def _plain_number(value: object) -> bool:
    """A python int or float, not a bool (which the torch path refuses with a TypeError)."""
    return isinstance(value, float | int) and not isinstance(value, bool)


def _compiled_hinge(loss, z: np.ndarray, target, kwargs: dict) -> tuple[float, np.ndarray] | None:
    """The hinge losses' value and gradient from the compiled kernel, or None where the
    input is not plain (the torch path then computes it, or says what is wrong). An
    empty batch is not: torch's mean over no rows is the NaN the losses document."""
    reduction = kwargs.get("reduction", "mean")
    if loss is sparsegen_lin_hinge_loss and set(kwargs) <= {"lam", "reduction"}:
        lam = kwargs.get("lam", 0.0)
        if not (_plain_number(lam) and -1e300 < lam < 1):  # NaN fails too
            return None
        c, q = 1.0 / (1.0 - lam), 0.0
    elif loss is sparsehourglass_hinge_loss and set(kwargs) <= {"q", "reduction"}:
        q = kwargs.get("q", 1.0)
        if not (_plain_number(q) and 0 < q and z.ndim == 2 and z.shape[-1] * q <= 1e300):
            return None
        c, q = 1.0, float(q)
    else:
        return None
    if isinstance(target, torch.Tensor) or reduction not in ("mean", "sum"):
        return None
    if z.ndim != 2 or not len(z):
        return None
    y = np.asarray(target)
    if y.dtype.kind not in "biuf":
        return None  # (the torch path names what is wrong with the labels)
    y = y.astype(np.float64, copy=False)
    if y.shape != z.shape or not (np.isfinite(z).all() and np.isin(y, (0.0, 1.0)).all()):
        return None  # (the torch path names what is wrong with the labels)
    if not np.abs(z).max(initial=0.0) * z.shape[-1] * max(c, 1.0) < 1e307:
        return None  # (a row's sum or spread past float64's range: the torch path scales it)
    from sparsegen._loss_kernels import pairwise_hinge

    grad = np.empty_like(z)
    value = pairwise_hinge(np.ascontiguousarray(z), np.ascontiguousarray(y), c, q, grad)
    if reduction == "mean":
        value, grad = value / len(z), grad / len(z)
    return float(value), grad
