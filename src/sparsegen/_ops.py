r"""The projection as PyTorch operators, so that it lives inside torch's dispatcher.

Two operators are registered with :mod:`torch.library` under the ``sparsegen``
namespace:

``sparsegen::project(Tensor z, Tensor? scale, str scale_from, float? q, str algorithm,
Tensor? mask)``
    ``-> (output, threshold, support_size, computed_scale)``: ``sparsemax(c z)``
    along the last dimension. Where ``c`` comes from is ``scale_from``:

    =============== ===================================================================
    ``"given"``     ``c`` is ``scale``, one per slice (None: 1)
    ``"cone"``      sparsecone's α of each slice's sum, with q the float ``q``, or, when
                    ``q`` is None, one q per slice in ``scale`` (taking no gradient)
    ``"hourglass"`` sparsehourglass's α̂, q as for ``"cone"``
    =============== ===================================================================

    A float ``q`` must be >= 0 (``inf``: sparsemax). The values of tensors are not
    checked (that would wait for the device): a ``scale`` of q < 0 projects by the
    formula's α, which is no longer the mapping's; the functional layer checks them.

    The computed α is returned as ``computed_scale`` (an empty tensor for
    ``"given"``). ``algorithm`` is ``"sort"``, ``"michelot"``, ``"compiled"`` or
    ``"triton"`` (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``), already resolved
    from ``"auto"``. ``mask`` (boolean,
    broadcastable to ``z``, True = keep) makes the other entries scores of
    -inf inside the kernel (0 in the output, outside the scale's sum), so a
    masked call costs no ``masked_fill`` pass.
``sparsegen::project_backward(Tensor output, Tensor support_size, Tensor grad, Tensor? scale)``
    ``-> Tensor``: the vector–Jacobian product ``c · s ⊙ (g − mean_S g)``.

Each has a CPU kernel (the numba kernels of :mod:`sparsegen._kernels` for
``"compiled"``, else the torch code), a kernel for every other device (the
Triton kernels of :mod:`sparsegen._triton_projection` for ``"triton"``, else the
torch code of :mod:`sparsegen._projection`; neither synchronises with the
host), a fake kernel (meta tensors, FakeTensor, dynamic shapes) and
a vmap rule. ``torch.export`` does not capture the operators: it traces that
torch code, exact and branch-free, into plain ATen ops, so exported programs
and their ONNX graphs run without sparsegen. (A decomposition registered in
torch's global table would do the same for ONNX, but inductor refuses to call
an operator that has one when the environment sets ``CI``.)

On CUDA two twins are registered too (:func:`_register_triton_operators`):
``sparsegen::project_triton`` and ``sparsegen::project_backward_triton``, the same
schemas computed by the Triton kernels as ``torch.library.triton_op`` operators, which
``torch.compile`` traces into so that inductor launches the kernels from its own code.

Autograd is registered on both operators (the backward of ``project`` calls
``project_backward``, whose own backward makes double backward work). The
projection is piecewise linear, so its second derivative is zero wherever it
is differentiable: the backward treats the output's support as constant.
Forward-mode AD through a custom operator would silently give zero tangents,
so :func:`project`, the entry point of every mapping, goes through
:class:`ProjectFunction` (``autograd.Function`` with a ``jvp`` and a generated
vmap rule) under functorch transforms and tracers, calls the operator directly
under ``torch.compile`` (which cannot trace a ``jvp``), and calls the kernels
directly in plain eager mode, where the dispatcher's round trip would cost
more than a short row's projection.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch.compiler import is_exporting

from sparsegen._projection import (
    TRITON_MAX_ROW,
    ConeScale,
    ProjectionResult,
    Scale,
    add_where_kept,
    compilable,
    contiguous,
    fill_masked_compiled,
    in_layout,
    numba_kernels,
    plain_eager,
    project_compiled,
    project_torch,
    project_transformed_compiled,
    resolve_algorithm,
    scaled_vjp_compiled,
    sum_signs_compiled,
    transform_backward_compiled,
    transform_compiled,
    triton_installed,
    triton_interpreted,
    triton_row,
    tritonable,
    vjp_compiled,
    vjp_torch,
)
from sparsegen._validation import (
    HALF_DTYPES,
    Parameter,
    broadcastable,
    compute_dtype,
    log_one_minus,
    number_tensor,
)

__all__ = [
    "ProjectBackwardFunction",
    "ProjectFunction",
    "exporting",
    "fill_masked",
    "parameter_in_kernel",
    "project",
    "project_cone",
    "project_lin",
    "project_transformed_rows",
    "sum_normalization_in_kernel",
    "transform_rows",
]

_lib = torch.library.Library("sparsegen", "DEF")
_lib.define(
    "project(Tensor z, Tensor? scale, str scale_from, float? q, str algorithm,"
    " Tensor? mask=None) -> (Tensor, Tensor, Tensor, Tensor)"
)
_lib.define(
    "project_backward(Tensor output, Tensor support_size, Tensor grad, Tensor? scale) -> Tensor"
)


SCALE_FROM = ("given", "cone", "hourglass")


def _triton():
    """The Triton kernels' module, imported on first use: importing triton takes a second."""
    from sparsegen import _triton_projection

    return _triton_projection


def _cone_scale_spec(
    scale_from: str, q: float | None, scale: torch.Tensor | None
) -> ConeScale | None:
    """The scale computed from the sum, if any, with its q: the float ``q``, else each
    slice's q in ``scale``."""
    if scale_from not in SCALE_FROM:
        raise ValueError(
            f"sparsegen::project: scale_from must be one of {SCALE_FROM}; got {scale_from!r}"
        )
    if scale_from == "given":
        return None
    if (q is None) == (scale is None):
        raise ValueError(
            f"sparsegen::project: scale_from={scale_from!r} takes q as a float or one per "
            "slice in scale, exactly one of the two"
        )
    if q is not None and not q >= 0:
        raise ValueError(f"sparsegen::project: q must be >= 0 (inf: sparsemax); got {q}")
    return ConeScale(scale if q is None else q, scale_from == "hourglass")


def _check_floating(name: str, **tensors: torch.Tensor | None) -> None:
    for arg, t in tensors.items():
        if isinstance(t, torch.Tensor) and not t.is_floating_point():
            raise TypeError(
                f"sparsegen::{name}: {arg} must be a floating-point tensor; got {t.dtype}"
            )


def _check_shapes(name: str, rows: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    """Each of ``tensors`` (None, or a tensor) broadcasts to the shape its argument takes
    for the slices of ``rows`` (``scale``: one per slice, ``(*batch, 1)``; ``mask``:
    ``rows``' own): the kernels index them by ``rows``' slices, unchecked."""
    if rows.dim() == 0:
        raise ValueError(f"sparsegen::{name}: a 0-d tensor has no dimension to project along")
    for arg, t in tensors.items():
        if not isinstance(t, torch.Tensor):  # (None, or the eager Triton path's number scale)
            continue
        shape = rows.shape if arg == "mask" else (*rows.shape[:-1], 1)
        if not broadcastable(t.shape, shape, onto=True):
            raise ValueError(
                f"sparsegen::{name}: {arg} of shape {tuple(t.shape)} does not broadcast to "
                f"{tuple(shape)}"
            )


def _check_gradient_shapes(
    output: torch.Tensor, support_size: torch.Tensor, grad: torch.Tensor
) -> None:
    """``project_backward``'s ``grad`` has the output's shape and ``support_size`` one entry
    a slice: the kernels index both by the output's slices, unchecked."""
    if grad.shape != output.shape:
        raise ValueError(
            f"sparsegen::project_backward: grad of shape {tuple(grad.shape)} must have the "
            f"output's shape {tuple(output.shape)}"
        )
    if support_size.shape != output.shape[:-1] or support_size.is_floating_point():
        raise ValueError(
            "sparsegen::project_backward: support_size must be an integer tensor of shape "
            f"{tuple(output.shape[:-1])} (one a slice); got {support_size.dtype} of shape "
            f"{tuple(support_size.shape)}"
        )


def _empty_result(z, cone):
    batch = z.shape[:-1]
    return (
        torch.empty_like(z),
        z.new_full(batch, float("nan")),
        z.new_zeros(batch, dtype=torch.int64),
        None if cone is None else cone.of(z),
    )


def _project(z, scale, cone, algorithm, info=True, keep_scale=True, mask=None, factor=None):
    """The projection by a resolved algorithm, arguments unchecked; see :func:`project_compiled`
    (and :func:`~sparsegen._triton_projection.project_triton` for ``factor``)."""
    if z.numel() == 0:
        return _empty_result(z, cone)
    if algorithm == "compiled":
        result = project_compiled(z, scale, cone, info, keep_scale, mask)
    elif algorithm == "triton":
        result = _triton().project_triton(z, scale, cone, info, keep_scale, mask, factor=factor)
    else:
        result = project_torch(contiguous(z), scale, cone, algorithm, mask)
    return in_layout(result[0], z), *result[1:]


def _checked_args(z, scale, scale_from, q, algorithm, mask):
    """``sparsegen::project``'s arguments checked: ``(scale, cone)``, the scale given (None
    where the cone computes it) and the cone's :class:`ConeScale`, if any."""
    _check_floating("project", z=z, scale=scale)
    _check_shapes("project", z, scale=scale, mask=mask)
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"sparsegen::project: mask must be a bool tensor; got {mask.dtype}")
    if algorithm not in ("sort", "michelot", "compiled", "triton"):
        raise ValueError(
            "sparsegen::project: algorithm must be 'sort', 'michelot', 'compiled' or 'triton' "
            f"(resolved from 'auto' by the caller); got {algorithm!r}"
        )
    if algorithm == "compiled" and not compilable(z):
        raise ValueError(
            "sparsegen::project: algorithm 'compiled' runs on CPU float32/float64 tensors; "
            f"got {z.dtype} on {z.device}"
        )
    if algorithm == "triton" and not (tritonable(z) and triton_row(z)):
        raise ValueError(
            "sparsegen::project: algorithm 'triton' runs on CUDA floating-point tensors (CPU "
            f"ones under TRITON_INTERPRET=1) with triton, rows of at most {TRITON_MAX_ROW:,} "
            f"entries; got {z.dtype} on {z.device}, rows of {z.shape[-1]:,}"
        )
    if isinstance(scale, torch.Tensor) and scale.dtype != compute_dtype(z.dtype):
        scale = scale.to(compute_dtype(z.dtype))  # (the torch path's cap is z's dtype's)
    cone = _cone_scale_spec(scale_from, q, scale)
    return (None if cone is not None else scale), cone


def _operator_result(z, result):
    """A projection's result as the operator returns it: an empty computed scale for none."""
    output, tau, support, computed = result
    return output, tau, support, z.new_empty(0) if computed is None else computed


def _project_kernel(z, scale, scale_from, q, algorithm, mask=None, factor=None):
    """``sparsegen::project`` on every device: the compiled kernel where asked, else torch
    code; ``factor``: see :func:`_EagerProject.forward`."""
    scale, cone = _checked_args(z, scale, scale_from, q, algorithm, mask)
    return _operator_result(z, _project(z, scale, cone, algorithm, mask=mask, factor=factor))


def _project_backward_kernel(output, support_size, grad, scale, triton=False):
    """``sparsegen::project_backward``: the Triton VJP on CUDA, and on CPU tensors where
    ``triton`` says the forward ran the Triton kernels (in Triton's interpreter)."""
    _check_floating("project_backward", output=output, grad=grad, scale=scale)
    _check_shapes("project_backward", output, scale=scale)
    _check_gradient_shapes(output, support_size, grad)
    by_triton = (
        output.numel() > 0
        and (output.is_cuda or triton)
        and tritonable(output)
        and triton_row(output)
    )
    if not by_triton and output.numel() > 0 and grad.dtype == output.dtype and compilable(output):
        result = vjp_compiled(output, support_size, grad, scale)
    elif by_triton:
        result = _triton().vjp_triton(output, support_size, grad, scale)
    else:
        result = vjp_torch(output, support_size, grad, scale)
    return in_layout(result, output)


_lib.impl("project", _project_kernel, "CPU")
_lib.impl("project", _project_kernel, "CompositeExplicitAutograd")
_lib.impl("project_backward", _project_backward_kernel, "CPU")
_lib.impl("project_backward", _project_backward_kernel, "CompositeExplicitAutograd")


@torch.library.register_fake("sparsegen::project", lib=_lib)
def _project_fake(z, scale, scale_from, q, algorithm, mask=None):
    batch = z.shape[:-1]
    return (
        torch.empty_like(z),  # the layout of every path's output: see in_layout
        z.new_empty(batch),
        z.new_empty(batch, dtype=torch.int64),
        z.new_empty(0)
        if scale_from == "given"
        else z.new_empty((*batch, 1), dtype=compute_dtype(z.dtype)),
    )


@torch.library.register_fake("sparsegen::project_backward", lib=_lib)
def _project_backward_fake(output, support_size, grad, scale):
    return torch.empty_like(output, dtype=grad.dtype)


# vmap rules: the operators work along the last dimension over any batch shape,
# so a vmapped dimension is moved to the front as one more batch dimension.
def _batched(t, bdim, size):
    return t.movedim(bdim, 0) if bdim is not None else t.expand(size, *t.shape)


def _batched_scale(scale, bdim, rank):
    """A per-slice scale (or a mask), moved and padded to broadcast against a batched
    ``rank``-D input."""
    if scale is None or bdim is None:
        return scale  # right-aligned broadcasting already fits the batched input
    scale = scale.movedim(bdim, 0)
    return scale.reshape(scale.shape[0], *(1,) * (rank - scale.ndim), *scale.shape[1:])


def _project_vmap_rule(operator):
    """The vmap rule of a projection operator (``sparsegen::project`` and its Triton
    twin): the vmapped dimension becomes one more batch dimension."""

    def rule(info, in_dims, z, scale, scale_from, q, algorithm, mask=None):
        z = _batched(z, in_dims[0], info.batch_size)
        scale = _batched_scale(scale, in_dims[1], z.ndim)
        # in_dims covers the arguments given: a defaulted mask has none
        mask = _batched_scale(mask, in_dims[5] if len(in_dims) > 5 else None, z.ndim)
        result = operator(z, scale, scale_from, q, algorithm, mask)
        return result, (0, 0, 0, None if scale_from == "given" else 0)

    return rule


def _project_backward_vmap_rule(operator):
    """The vmap rule of a backward operator (``sparsegen::project_backward`` and its twin)."""

    def rule(info, in_dims, output, support_size, grad, scale):
        size = info.batch_size
        output = _batched(output, in_dims[0], size)
        support_size = _batched(support_size, in_dims[1], size)
        grad = _batched(grad, in_dims[2], size)
        scale = _batched_scale(scale, in_dims[3], output.ndim)
        return operator(output, support_size, grad, scale), 0

    return rule


torch.library.register_vmap(
    "sparsegen::project", _project_vmap_rule(torch.ops.sparsegen.project.default), lib=_lib
)
torch.library.register_vmap(
    "sparsegen::project_backward",
    _project_backward_vmap_rule(torch.ops.sparsegen.project_backward.default),
    lib=_lib,
)


def _vjp(output, support, grad, scale, operator=None, triton=False):
    """``c · s ⊙ (g − mean_S g)``, recorded by autograd when it records (double backward).
    ``operator``: the backward operator of a forward that ran as the Triton twin (traced
    by ``torch.compile``), which the backward then calls as well. ``triton``: the forward
    ran the Triton kernels on CPU tensors, whose plain eager backward then runs the Triton
    VJP too (the operator's schema routes by device: CPU tensors take the numba VJP)."""
    if operator is not None or torch.compiler.is_compiling():
        operator = operator or torch.ops.sparsegen.project_backward
        return operator.default(output, support, grad, _scale_tensor(scale, output))
    number = isinstance(scale, float)  # (the eager Triton path's: its kernels take it so)
    recorded = torch.is_grad_enabled() and (
        grad.requires_grad or (not number and scale is not None and scale.requires_grad)
    )
    if not recorded and plain_eager(output, grad, None if number else scale):
        scale = scale if triton else _scale_tensor(scale, output)
        return _project_backward_kernel(output, support, grad, scale, triton)
    return ProjectBackwardFunction.apply(output, support, grad, _scale_tensor(scale, output))


def _scale_tensor(scale: torch.Tensor | float | None, like: torch.Tensor) -> torch.Tensor | None:
    """A number scale as the tensor the operators take (in ``like``'s compute dtype)."""
    if isinstance(scale, float):
        return number_tensor(scale, compute_dtype(like.dtype), like.device)
    return scale


# Autograd of sparsegen::project, registered on the operator and shared by the
# Function classes below. What it keeps for the backward is the output, the support sizes
# and per-slice values (the scale; the cone's factor, from the sign of the sum and the
# count of kept entries), not the scores: on the support the output is c·z − τ, which
# gives every derivative the scores would. Half outputs hold too few digits for that
# (bfloat16 three): half scores with a scale to differentiate are kept.
def _project_setup(ctx, inputs, output, factor=None):
    """``factor``: the cone's :meth:`~ConeScale.factor`, where the forward's kernel wrote it."""
    z, scale, scale_from, q, algorithm, *mask = inputs
    out, tau, support, computed = output
    ctx.cone = _cone_scale_spec(scale_from, q, scale)
    # a computed scale α(z) is an output with a derivative: double backward differentiates
    # the backward's formula through the α it keeps
    ctx.mark_non_differentiable(tau, support, *(() if ctx.cone else (computed,)))
    ctx.backward_operator = None
    ctx.triton_vjp = algorithm == "triton"
    mask = mask[0] if mask else None
    ctx.factor = None
    if ctx.cone is not None:
        if isinstance(ctx.cone.q, torch.Tensor) and ctx.needs_input_grad[1]:
            raise NotImplementedError(
                "sparsegen::project: no gradient for a per-slice q (q=None, q in scale); "
                "sparsecone and sparsehourglass compute their scale in torch when q needs one"
            )
        scale = computed
        if factor is None:
            factor = _cone_factor(ctx.cone, z, mask, scale.dtype)
        if not isinstance(factor, torch.Tensor):  # (a number: −1/(1 + Kq))
            factor, ctx.factor = None, factor
    # whether the scale takes a gradient: the cone's, or a given one that requires it
    ctx.scale_derived = ctx.cone is not None or (scale is not None and ctx.needs_input_grad[1])
    # (the eager Triton path's number scale, which a tensor's place cannot hold)
    ctx.number_scale, scale = (scale, None) if isinstance(scale, float) else (None, scale)
    scores = z if ctx.scale_derived and z.dtype in HALF_DTYPES else None
    ctx.save_for_backward(out, support, scale, factor, mask, scores)
    # (the same places: functorch's generated vmap rule keeps the batch dimensions of the
    # last of the two calls for both, and a None takes any)
    ctx.save_for_forward(out, support, scale, factor, mask, z)


def _cone_factor(cone, z, mask, dtype) -> torch.Tensor | float:
    """``∂α/∂z_i ÷ α²`` per slice (:meth:`ConeScale.slice_factor`), from what the scores
    hold and neither α nor the output does: the sign of their sum (sparsehourglass's
    ``|Σz|``) and, with a mask, how many are kept; one numba read on the CPU."""
    needs_scores = cone.mirror or mask is not None
    if needs_scores and z.numel() and compilable(z) and plain_eager(z, mask):
        sign, k = sum_signs_compiled(z, mask)
        k = k if mask is not None else z.shape[-1]  # (a number: −1/(1 + Kq) in Python)
        return cone.factor(sign if cone.mirror else None, k, dtype)
    return cone.slice_factor(z, mask, dtype)


def _support_moment(
    unscaled: torch.Tensor,
    out: torch.Tensor,
    support: torch.Tensor,
    scale: torch.Tensor,
    z: torch.Tensor | None,
) -> torch.Tensor:
    """``c Σ_S u_j z_j`` (``u = J_sparsemaxᵀ g``, 0 off the support ``S``), so that
    ``∂L/∂c`` is this over ``c``: from the scores ``z`` where they are kept, else from the
    output: on ``S``, ``c z_j = out_j + τ``, and ``Σ_S u_j = 0`` takes any per-slice
    constant away, so it is ``Σ_S u_j (out_j − max out)``.

    Subtracting the largest output keeps the terms small (the scores' differences, however
    large the scores) and makes a slice whose support shares its mass equally (+inf scores:
    the limit, the same at any scale) give exactly 0. The output's float32 rounding bounds
    its precision: ``ε/|S|`` absolute, which is coarse next to ``c·Δz`` only where the
    output is nearly uniform (the projected scores within about 1e-4 of each other)."""
    if z is not None:  # only the finite support: +inf scores' slice is the limit, as above
        counted = (out > 0) & torch.isfinite(z)
        return scale * torch.where(counted, unscaled * z, 0).sum(-1, keepdim=True)
    top = out.amax(-1, keepdim=True) if out.shape[-1] else 0.0  # (amax has no identity)
    moment = (unscaled * (out - top)).sum(-1, keepdim=True)
    # (a NaN slice, whose support is empty, passes 0: its u is 0, its output NaN)
    return torch.where(support.unsqueeze(-1) == 0, 0.0, moment)


def _scaled_vjp(ctx, out, support, grad, scale, usable, c, z):
    """``c·u`` (``u = J_sparsemaxᵀ g``) plus the first-order limit of a slice whose scale
    is not usable, and the moment (:func:`_support_moment`), in torch ops that double
    backward differentiates."""
    # In the scale's dtype: float32 for half scores (the kernels' compute dtype).
    grad_unscaled = _vjp(
        out, support, grad.to(scale.dtype), None, ctx.backward_operator, ctx.triton_vjp
    )
    with torch.no_grad():  # the limit is a constant: its derivatives are 0 · inf
        outside = grad_unscaled * torch.where(usable, 0.0, scale)  # (0 · inf, 0 · NaN: 0)
        limit = torch.nan_to_num(outside, nan=0.0, posinf=math.inf, neginf=-math.inf)
    # (0 where the scale is not usable, as the kernel's: nothing through it, not 0 · NaN)
    moment = torch.where(usable, _support_moment(grad_unscaled, out, support, c, z), 0.0)
    return grad_unscaled * c + limit, moment


def _one_kernel_call(ctx, out, grad, scale, scores=None) -> str | None:
    """Which kernel gives :func:`_scaled_vjp`'s passes in one call: ``"triton"`` where
    the forward ran the Triton kernels (CUDA, or CPU tensors in Triton's interpreter),
    also for half ``scores`` kept for the moment (rows held on chip), ``"compiled"``
    (numba) on other CPU tensors; None where something records the backward (double
    backward, a trace, a functorch transform) or the dtypes differ."""
    scale_dtype = out.dtype if scores is None else compute_dtype(out.dtype)
    if (
        torch.is_grad_enabled()
        or torch.compiler.is_compiling()
        or ctx.backward_operator is not None
        or out.numel() == 0
        or not (grad.dtype == out.dtype and scale.dtype == scale_dtype)
        or not plain_eager(out, grad, scale)
    ):
        return None
    if (out.is_cuda or ctx.triton_vjp) and tritonable(out) and triton_row(out):
        return "triton" if scores is None or _triton().holds_on_chip(out) else None
    return "compiled" if compilable(out) and not ctx.triton_vjp and scores is None else None


def _scaled_vjp_by(
    kernel: str, scores: torch.Tensor | None
) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The one-call scaled VJP (:func:`_one_kernel_call`'s ``kernel``), its moment from the
    kept half ``scores`` where there are."""
    if kernel == "compiled":
        return scaled_vjp_compiled
    return functools.partial(_triton().scaled_vjp_triton, scores=scores)


def _project_backward(ctx, grad, _tau, _support, grad_computed=None):
    """``Jᵀg = c · s ⊙ (g − mean_S g)``; with a scale that needs a gradient,
    ``∂L/∂c = Σ_j z_j (J_sparsemaxᵀ g)_j`` (:func:`_support_moment`), which for
    sparsecone's and sparsehourglass's scales flows on to ``z`` through ``∂α/∂z``, as the
    gradient of the computed α does (double backward).

    A scale of 0, inf or NaN (a +inf sum's α, sparsehourglass's limit, a NaN slice's) is 0
    in these formulas, so that their own derivatives (double backward) stay finite, and its
    slice takes the first-order limit instead: ``c · (J_sparsemaxᵀ g)``, 0 where that is
    0, and nothing through the scale. The cone's term is ``∂α/∂z · ∂L/∂α =
    factor · α · (c Σ_S u_j z_j)``: no division by α, whose square may underflow."""
    out, support, scale, factor, mask, z = ctx.saved_tensors
    scale = scale if ctx.number_scale is None else ctx.number_scale
    if grad is None:  # (only the computed scale is differentiated, or nothing)
        if grad_computed is None:
            return (None,) * 6
        grad = torch.zeros_like(out)
    if not ctx.scale_derived:
        vjp = _vjp(out, support, grad, scale, ctx.backward_operator, ctx.triton_vjp)
        return vjp, *(None,) * 5
    kernel = _one_kernel_call(ctx, out, grad, scale, z)
    if kernel is not None and ctx.cone is None:  # both gradients from the kernel's one call
        vjp = _scaled_vjp_by(kernel, z)
        grad_z, grad_scale = vjp(out, support, grad, scale, per_scale=True)
        grad_z = in_layout(grad_z, out).to(out.dtype)
        return grad_z, grad_scale.sum_to_size(scale.shape), None, None, None, None
    if kernel == "triton" and ctx.cone is not None and factor is not None and grad_computed is None:
        cone_vjp = _triton().cone_vjp_triton  # (the whole of it)
        grad_z, _ = cone_vjp(out, grad, scale, factor, mask, scores=z)
        return in_layout(grad_z, out).to(out.dtype), None, None, None, None, None
    fused = kernel is not None  # (a cone's, whose term is added below)
    if fused:  # nothing records this backward: the unusable scales are 0 by one operation
        c = torch.nan_to_num(scale, nan=0.0, posinf=0.0, neginf=0.0)
    else:  # (a slice whose scale is not usable: no terms, nor derivatives through them)
        usable = torch.isfinite(scale) & (scale != 0)
        c = torch.where(usable, scale, 0.0)
    if ctx.cone is not None:
        # an α that overflowed (a tiny q, a zero sum) makes its slice the limit, the maxima
        # sharing the mass: locally constant, or at tied maxima 0 by convention, as a
        # tensor q's and forward mode's; as 0, its first-order limit is 0 too, not α·Jᵀg
        # (±inf at ties). (A NaN slice's and a zero α's limits were 0 already.)
        scale = c
    if fused:
        grad_z, moment = _scaled_vjp_by(kernel, z)(out, support, grad, scale)
        grad_z = in_layout(grad_z, out)
    else:
        grad_z, moment = _scaled_vjp(ctx, out, support, grad, scale, usable, c, z)
    if ctx.cone is not None:
        # (factor · c first: 0 at a zero sum's sign, never 0 · inf where c², a huge α̂'s,
        # overflows; per slice, masked entries then set to 0 by a select)
        slope = (ctx.factor if factor is None else factor) * c
        term = slope * moment
        if grad_computed is not None:
            term = term + slope * c * grad_computed
        if fused:  # in place, in the kernel's own buffer
            grad_z = add_where_kept(grad_z, mask, term)
        else:
            grad_z = grad_z + (term if mask is None else torch.where(mask, term, 0.0))
        return grad_z.to(out.dtype), None, None, None, None, None
    # (a cone's scale computed in torch comes as a given one; the moment is 0 where c is)
    grad_scale = moment / torch.where(c != 0, c, 1.0)
    return grad_z.to(out.dtype), grad_scale.sum_to_size(scale.shape), None, None, None, None


def _project_jvp(ctx, z_tangent, scale_tangent, *_):
    """``J v``: the backward's map (the Jacobian is symmetric), plus the scale's
    own term ``c'(v) · J z``."""
    out, support, scale, _factor, mask, z = ctx.saved_tensors
    if ctx.cone is not None:  # (α recomputed from z: the formula differentiable, nested)
        scale = ctx.cone.of(z, mask)
        scale_grad = ctx.cone.grad(z, scale, mask)
        kept_tangent = z_tangent if mask is None else torch.where(mask, z_tangent, 0.0)
        scale_tangent = (scale_grad * kept_tangent).sum(-1, keepdim=True)
    tangent = torch.zeros_like(out) if z_tangent is None else z_tangent
    tangent = _vjp(out, support, tangent, scale)
    if scale_tangent is not None:  # on the finite support only, as in the backward
        counted = (out > 0) & torch.isfinite(z)
        tangent = tangent + scale_tangent * _vjp(out, support, torch.where(counted, z, 0), None)
    if scale is not None:
        # An infinite scale (sparsehourglass's α̂ where |Σz| + Kq = 0) gives the limit, the
        # maxima sharing the mass: locally constant, as the backward's cut slices are, where
        # the tangent's terms are inf · 0; a NaN one (a NaN slice's, a cone's outside its
        # domain) gives 0, as the backward does, not the NaN of its terms
        tangent = torch.where(torch.isfinite(scale), tangent, 0.0)
    computed_tangent = scale_tangent if ctx.cone is not None else None
    return tangent.to(out.dtype), None, None, computed_tangent


# Autograd of sparsegen::project_backward, r = c · P g with P a symmetric
# projector: linear in g (∂/∂g is the same map) and in c (∂/∂c = Σ_j g_j (P ḡ)_j);
# ∂/∂output is zero, since the output enters only through its support, which is
# locally constant: the projection's second derivative is zero wherever it exists.
def _vjp_setup(ctx, inputs, output):
    out, support, grad, scale = inputs
    ctx.backward_operator = None
    ctx.save_for_backward(out, support, grad, scale)
    ctx.save_for_forward(out, support, grad, scale)


def _vjp_backward(ctx, grad_grad):
    out, support, grad, scale = ctx.saved_tensors
    grad_scale = None
    if scale is not None and ctx.needs_input_grad[3]:
        unscaled = _vjp(out, support, grad_grad.to(scale.dtype), None, ctx.backward_operator)
        grad_scale = (unscaled * torch.where(out > 0, grad, 0)).sum(-1, keepdim=True)
        grad_scale = grad_scale.sum_to_size(scale.shape)
    return None, None, _vjp(out, support, grad_grad, scale, ctx.backward_operator), grad_scale


def _vjp_jvp(ctx, _out_tangent, _support_tangent, grad_tangent, scale_tangent):
    out, support, grad, scale = ctx.saved_tensors
    tangent = torch.zeros_like(out) if grad_tangent is None else grad_tangent
    tangent = _vjp(out, support, tangent, scale)
    if scale_tangent is not None:
        tangent = tangent + scale_tangent * _vjp(out, support, grad, None)
    return tangent.to(grad.dtype)


torch.library.register_autograd(
    "sparsegen::project", _project_backward, setup_context=_project_setup, lib=_lib
)
torch.library.register_autograd(
    "sparsegen::project_backward", _vjp_backward, setup_context=_vjp_setup, lib=_lib
)


def _register_triton_operators() -> bool:
    """Registers ``sparsegen::project_triton`` and ``sparsegen::project_backward_triton``
    (called where CUDA is and triton is installed), and says whether it did.

    They are ``sparsegen::project`` and ``sparsegen::project_backward`` by the Triton
    kernels, as ``torch.library.triton_op`` operators: ``torch.compile`` traces into
    their bodies, so that inductor launches the kernels from its own generated code
    instead of calling back into Python. Eager calls and functorch transforms keep the
    opaque operators, whose kernels are the same; ``torch.export`` traces the torch code
    (see :func:`project`).

    torch keys a compiled graph in its caches by the kernels' source, not by these
    bodies' Python: after changing a launcher, clear the inductor cache
    (``TORCHINDUCTOR_CACHE_DIR``) before compiling again."""
    try:
        from sparsegen._triton_projection import traced_launches, vjp_triton
    except ImportError:  # pragma: no cover - triton found but not importable
        return False

    @torch.library.triton_op("sparsegen::project_triton", mutates_args=())
    def project_triton_operator(
        z: torch.Tensor,
        scale: torch.Tensor | None,
        scale_from: str,
        q: float | None,
        algorithm: str,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        scale, cone = _checked_args(z, scale, scale_from, q, algorithm, mask)
        with traced_launches():
            return _operator_result(z, _project(z, scale, cone, "triton", mask=mask))

    @torch.library.triton_op("sparsegen::project_backward_triton", mutates_args=())
    def project_backward_triton_operator(
        output: torch.Tensor,
        support_size: torch.Tensor,
        grad: torch.Tensor,
        scale: torch.Tensor | None,
    ) -> torch.Tensor:
        _check_floating("project_backward", output=output, grad=grad, scale=scale)
        if output.numel() == 0:
            return in_layout(vjp_torch(output, support_size, grad, scale), output)
        with traced_launches():
            return in_layout(vjp_triton(output, support_size, grad, scale), output)

    def backward_by_triton(setup):
        def setup_context(ctx, inputs, output):
            setup(ctx, inputs, output)
            ctx.backward_operator = torch.ops.sparsegen.project_backward_triton

        return setup_context

    project_triton_operator.register_autograd(
        _project_backward, setup_context=backward_by_triton(_project_setup)
    )
    project_triton_operator.register_vmap(_project_vmap_rule(project_triton_operator))
    project_backward_triton_operator.register_autograd(
        _vjp_backward, setup_context=backward_by_triton(_vjp_setup)
    )
    project_backward_triton_operator.register_vmap(
        _project_backward_vmap_rule(project_backward_triton_operator)
    )
    return True


# Registered where CUDA is, the only device whose kernels torch.compile traces: importing
# triton elsewhere would fix its choice of interpreter before a CPU user's TRITON_INTERPRET=1.
_TRITON_OPERATORS = (
    torch.cuda.is_available() and triton_installed() and _register_triton_operators()
)


def _triton_traced() -> bool:
    """Whether ``torch.compile`` traces into the Triton kernels (the ``triton_op``
    operators) where the algorithm is ``"triton"``: where they are registered and triton
    compiles them. The interpreter's kernels (``TRITON_INTERPRET=1``) cannot be traced:
    there the opaque operators run them."""
    return _TRITON_OPERATORS and not triton_interpreted()


class ProjectFunction(torch.autograd.Function):
    """``sparsegen::project`` with forward-mode AD and a vmap rule: what functorch
    transforms, forward-mode dual tensors and tracers see. (A custom operator
    alone would give zero tangents under forward-mode AD, silently.)"""

    generate_vmap_rule = True

    @staticmethod
    def forward(z, scale, scale_from, q, algorithm, mask):
        return torch.ops.sparsegen.project.default(z, scale, scale_from, q, algorithm, mask)

    setup_context = staticmethod(_project_setup)
    backward = staticmethod(_project_backward)
    jvp = staticmethod(_project_jvp)


class ProjectBackwardFunction(torch.autograd.Function):
    """``sparsegen::project_backward`` with forward-mode AD and a vmap rule."""

    generate_vmap_rule = True

    @staticmethod
    def forward(output, support, grad, scale):
        return torch.ops.sparsegen.project_backward.default(output, support, grad, scale)

    setup_context = staticmethod(_vjp_setup)
    backward = staticmethod(_vjp_backward)
    jvp = staticmethod(_vjp_jvp)


class _EagerProject(torch.autograd.Function):
    """The same autograd for plain eager calls: a forward that takes ``ctx``
    skips the signature binding of ``setup_context`` Functions (which costs more than
    a short row's projection), and calls the kernel without the dispatcher."""

    @staticmethod
    def forward(ctx, z, scale, scale_from, q, algorithm, mask):
        inputs = (z, scale, scale_from, q, algorithm, mask)
        # the Triton kernel writes the cone's factor as it sums the scores: torch ops would
        # read them again for the sign of the sum, the count of the kept ones
        cone_gradient = scale_from != "given" and ctx.needs_input_grad[0] and z.numel() > 0
        factor = None
        if algorithm == "triton" and cone_gradient:
            factor = z.new_empty((*z.shape[:-1], 1), dtype=compute_dtype(z.dtype))
        output = _project_kernel(*inputs, factor=factor)
        _project_setup(ctx, inputs, output, factor)
        # None, not zeros, for the outputs nothing differentiates (the threshold, the
        # support, a computed scale): three kernel launches fewer a backward on a GPU
        ctx.set_materialize_grads(False)
        return output

    backward = staticmethod(_project_backward)


def fill_masked(z: torch.Tensor, mask: torch.Tensor | None, value: float) -> torch.Tensor:
    """``z`` with ``value`` where ``mask`` (True = keep) is False; ``z`` itself without a mask.

    In plain eager mode on CPU float tensors that record no gradient, the
    compiled kernel's select pass (torch's ``masked_fill`` costs several projections
    of the same tensor); elsewhere ``masked_fill``.
    """
    if mask is None:
        return z
    recorded = torch.is_grad_enabled() and z.requires_grad
    if not recorded and _eager_kernels(z, mask, "auto") == "compiled":
        return in_layout(fill_masked_compiled(z, mask, value), z)
    return z.masked_fill(~mask, value)


def _eager_kernels(z: torch.Tensor, mask: torch.Tensor | None, algorithm: str) -> str | None:
    """``"compiled"`` or ``"triton"`` where a kernel of theirs may run on ``z`` directly: a
    plain eager call (nothing compiles, traces or transforms it, see :func:`plain_eager`)
    on a non-empty tensor for which ``algorithm`` resolves to them; else None."""
    if torch.compiler.is_compiling() or not plain_eager(z, mask) or z.numel() == 0:
        return None
    resolved = resolve_algorithm(algorithm, z)
    return resolved if resolved in ("compiled", "triton") else None


def _transform(z, mask, kind, kernels):
    """``(transformed, top)`` by the numba (``"compiled"``) or the Triton transform kernel."""
    if kernels == "triton":
        from sparsegen._triton_transform import transform_triton

        gap, top = transform_triton(z, mask, kind)
    else:
        gap, top = transform_compiled(z, mask, kind)
    return in_layout(gap, z), top


class _TransformFunction(torch.autograd.Function):
    r"""A kernel's gap transform with its derivative, for plain eager calls that record one.

    ``top`` (the slice's maximum of ``z`` or of ``|z|``) is returned as a constant:
    the mapping projects ``c(top) · gap(z, top)``, which is ``g(z)/(1−λ)`` minus
    ``g(top)/(1−λ)``, a per-slice shift that sparsemax ignores, so ``top``'s own
    derivative cancels exactly. What remains: ``∂gap/∂z = e^{z−top} = gap + 1``
    (``"exp_gap"``) or ``2z/top²`` (``"square_gap"``, 0 at masked entries); 0 at an
    infinite score, whose slice's mass split (the limit) is constant.
    """

    @staticmethod
    def forward(ctx, z, mask, kind, kernels):
        gap, top = _transform(z, mask, kind, kernels)
        ctx.mark_non_differentiable(top)
        ctx.set_materialize_grads(False)  # (top's gradient: None, not a tensor of zeros)
        ctx.kind, ctx.dtype, ctx.kernels = kind, z.dtype, kernels
        ctx.save_for_backward(gap if kind == "exp_gap" else z, top, mask)
        return gap, top

    @staticmethod
    def backward(ctx, grad, _top):
        saved, top, mask = ctx.saved_tensors
        if grad is None:
            return None, None, None, None
        if not torch.is_grad_enabled() and plain_eager(saved, grad, top):
            # nothing records or transforms this backward (double backward, vmap): one pass
            if ctx.kernels == "triton":
                from sparsegen._triton_transform import transform_backward_triton

                grad_z = transform_backward_triton(saved, mask, grad, top, ctx.kind)
                return grad_z.to(ctx.dtype), None, None, None
            if grad.dtype == saved.dtype:
                grad_z = transform_backward_compiled(saved, mask, grad, top, ctx.kind)
                return grad_z.to(ctx.dtype), None, None, None
        # (an infinite score's 0 is left to a NaN slice's NaN, as in the torch formulas)
        if ctx.kind == "exp_gap":  # (in the gaps' dtype: float32 for half scores)
            grad_z = grad * (saved + 1)
            grad_z = torch.where((saved == math.inf) & grad.isfinite(), 0.0, grad_z)
            return grad_z.to(ctx.dtype), None, None, None
        # the ratio first and top last, as torch's chain rule does: 2z, top² or 1/top
        # may overflow
        grad_z = grad * (2 * (saved / top)) / top
        dropped = saved.isinf() & grad.isfinite()
        dropped = dropped if mask is None else dropped | ~mask
        return torch.where(dropped, 0.0, grad_z).to(ctx.dtype), None, None, None


def transform_rows(
    z: torch.Tensor, mask: torch.Tensor | None, kind: str, algorithm: str
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(transformed, top)`` along the last dimension by one kernel pass, numba's on the
    CPU (:mod:`sparsegen._transform_kernels`) or Triton's on CUDA
    (:mod:`sparsegen._triton_transform`), or None where the caller's torch code runs
    instead: another algorithm, an empty tensor, and anything that traces, compiles or
    transforms (which sees that torch code). ``"ratio"`` records no gradient.
    """
    kernels = _eager_kernels(z, mask, algorithm)
    if kernels is None:
        return None
    if torch.is_grad_enabled() and z.requires_grad:
        if kind == "ratio":
            return None
        return _TransformFunction.apply(z, mask, kind, kernels)
    return _transform(z, mask, kind, kernels)


class _ProjectTransformedFunction(torch.autograd.Function):
    """Sparsegen-exp's or -sq's projection straight from the scores by the Triton kernel
    (rows held on chip), with its derivatives to the scores and to a learnt λ: the forward
    keeps each row's scale and top besides the scores and the output (the transformed
    scores are never written), the backward is the VJP through the transform's derivative
    in one launch, whose moment ``c ∂L/∂c`` gives λ's gradient, ``moment/(1 − λ)`` (the
    scale ``e^top/(1 − λ)`` or ``top²/(1 − λ)`` has ``∂c/∂λ = c/(1 − λ)``). Double backward
    differentiates ``unfused(z, λ)`` (the transform, then the projection) at the kept
    scores instead: a recomputation that records its own graph."""

    @staticmethod
    def forward(ctx, z, mask, kind, lam, unfused):
        log_c = -log_one_minus(lam, z)
        result = _triton().project_transformed_triton(z, mask, kind, log_c, saved=True)
        output, tau, support, scale, top = result
        output = in_layout(output, z)
        ctx.mark_non_differentiable(tau, support)
        ctx.set_materialize_grads(False)  # (the threshold's and support's: None)
        ctx.number_lam, tensor_lam = (lam, None) if isinstance(lam, float) else (None, lam)
        ctx.save_for_backward(z, mask, output, scale, top, tensor_lam)
        ctx.kind, ctx.unfused = kind, unfused
        return output, tau, support

    @staticmethod
    def backward(ctx, grad, _tau, _support):
        z, mask, output, scale, top, lam = ctx.saved_tensors
        if grad is None:
            return (None,) * 5
        lam_grad = ctx.needs_input_grad[3]
        if torch.is_grad_enabled() or not plain_eager(output, grad):
            recording = torch.is_grad_enabled()
            lam = lam if lam is not None else ctx.number_lam
            with torch.enable_grad():
                recomputed = ctx.unfused(z, lam)
            wrt = (z, lam) if lam_grad else (z,)
            grads = torch.autograd.grad(recomputed, wrt, grad, create_graph=recording)
            return grads[0], None, None, grads[1] if lam_grad else None, None
        transform = (z, mask, top, ctx.kind)
        if not lam_grad:
            grad_z = _triton().vjp_triton(output, None, grad, scale, transform=transform)
            return in_layout(grad_z, output), None, None, None, None
        vjp = _triton().scaled_vjp_triton
        grad_z, moment = vjp(output, None, grad, scale, transform=transform)
        grad_lam = _rows_summed(moment / (1 - lam), lam)
        return in_layout(grad_z, output), None, None, grad_lam, None


def _fused_with_gradient(
    z: torch.Tensor, lam_recorded: bool, kernels: str, unfused: Callable | None
) -> bool:
    """Whether the Triton projection from the scores takes its gradients itself
    (:class:`_ProjectTransformedFunction`): rows held on chip (of any floating dtype: the
    VJP recomputes the gaps of half scores in float32; float32 or float64 ones where λ
    takes a gradient, whose moment the half output's few digits would not give), and the
    caller's ``unfused`` path for double backward."""
    return (
        kernels == "triton"
        and unfused is not None
        and (not lam_recorded or z.dtype not in HALF_DTYPES)
        and _triton().holds_on_chip(z)
    )


def project_transformed_rows(
    z: torch.Tensor,
    mask: torch.Tensor | None,
    kind: str,
    lam: float | torch.Tensor,
    algorithm: str,
    unfused: Callable[..., torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Sparsegen-exp's or -sq's projection (the last dimension) straight from the scores,
    the transformed scores never written: ``(output, threshold, support)`` by the numba
    kernel for long rows (:func:`~sparsegen._projection.project_transformed_compiled`)
    or the Triton one for rows held on chip
    (:func:`~sparsegen._triton_projection.project_transformed_triton`), or None where the
    caller transforms then projects: the other rows, wherever :func:`transform_rows` gives
    None, and a gradient to record, but for the Triton kernel's rows where only the
    scores take it (:class:`_ProjectTransformedFunction`; ``unfused(z, dim, mask,
    kind, lam, algorithm, return_info, dtype)`` is the output by transforming, then
    projecting, for its double backward)."""
    kernels = _eager_kernels(z, mask, algorithm)
    if kernels is None or (kernels == "compiled" and z.shape[-1] < numba_kernels().LONG_ROW):
        return None
    lam_recorded = isinstance(lam, torch.Tensor) and lam.requires_grad
    recorded = torch.is_grad_enabled() and (z.requires_grad or lam_recorded)
    if recorded and not _fused_with_gradient(z, lam_recorded, kernels, unfused):
        return None
    if recorded:

        def along_rows(scores: torch.Tensor, lam: Parameter) -> torch.Tensor:  # (unfused)
            return unfused(scores, -1, mask, kind, lam, algorithm, False, z.dtype)

        return _ProjectTransformedFunction.apply(z, mask, kind, lam, along_rows)
    log_c = -log_one_minus(lam, z)
    if kernels == "triton":
        result = _triton().project_transformed_triton(z, mask, kind, log_c)
    else:
        result = project_transformed_compiled(z, mask, kind, log_c)
    return None if result is None else (in_layout(result[0], z), *result[1:])


class _ProjectLinFunction(torch.autograd.Function):
    """Sparsegen-lin of a tensor λ by the Triton kernels, which compute each row's scale
    ``c = 1/(1 − λ)`` themselves (NaN where λ is not < 1) and keep it: the backward gives
    the scores' gradient and λ's, ``c² ∂L/∂c``, in one launch. It keeps the output, not the
    scores (but for half ones: :func:`_kept_scores`), as the operator's autograd does;
    double backward runs the same formulas in torch ops (:func:`_lin_vjp_recorded`)."""

    @staticmethod
    def forward(ctx, z, lam, mask):
        output, tau, support, scale = _triton().project_triton(z, lam, None, mask=mask, lin=True)
        output = in_layout(output, z)
        ctx.mark_non_differentiable(tau, support)
        ctx.set_materialize_grads(False)  # (the threshold's and support's: None)
        ctx.save_for_backward(lam, output, support, scale, _kept_scores(z, output))
        return output, tau, support

    @staticmethod
    def backward(ctx, grad, _tau, _support):
        lam, output, support, scale, z = ctx.saved_tensors
        if grad is None:
            return None, None, None
        if torch.is_grad_enabled() or not plain_eager(output, grad):
            grad_z, grad_lam = _lin_vjp_recorded(output, support, grad, lam, z)
        elif not ctx.needs_input_grad[1]:
            grad_z = _triton().vjp_triton(output, support, grad, scale)
            return in_layout(grad_z, output), None, None
        else:
            vjp = _triton().scaled_vjp_triton
            grad_z, grad_lam = vjp(output, support, grad, scale, per_scale=True, lin=True, scores=z)
            grad_z = in_layout(grad_z, output)
        return grad_z, _rows_summed(grad_lam, lam), None


def _lin_vjp_recorded(
    output: torch.Tensor,
    support: torch.Tensor,
    grad: torch.Tensor,
    lam: torch.Tensor,
    z: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c·u, c·m)``: the VJP's two gradients in torch ops that autograd records, with
    ``u = J_sparsemaxᵀ g`` (:func:`_vjp`, in the scale's dtype), the moment ``m = Σ_S u_j
    (p_j − max p)`` (:func:`_support_moment`, through the output: its derivative to the
    scores; from the kept half scores ``z`` where there are) and ``c`` recomputed from λ, 0
    where λ is not < 1 (such a slice is NaN, its ``u`` 0)."""
    scale = torch.reciprocal(1.0 - torch.where(lam < 1, lam, math.nan))
    c = torch.where(torch.isfinite(scale), scale, 0.0)
    u = _vjp(output, support, grad.to(c.dtype), None, triton=True)
    return (u * c).to(output.dtype), c * _support_moment(u, output, support, c, z)


def _kept_scores(z: torch.Tensor, output: torch.Tensor) -> torch.Tensor | None:
    """The scores a learnt scale's backward keeps besides the output: half ones, whose
    output holds too few digits for the moment (bfloat16 three), and none otherwise."""
    return z if output.dtype in HALF_DTYPES else None


def parameter_in_kernel(
    z: torch.Tensor, value: object, mask: torch.Tensor | None, algorithm: str
) -> bool:
    """Whether a tensor parameter (sparsegen-lin's λ, sparsecone's or sparsehourglass's q)
    goes to the Triton kernels as it is, which compute the scale of it, check it (NaN rows
    where it is out of range) and differentiate it: a plain eager call they run (CUDA, or
    CPU tensors in Triton's interpreter), and nothing to record, float32 or float64 scores,
    or half ones in rows held on chip (kept for the scale's gradient: split rows take the
    torch path)."""
    if not (
        isinstance(value, torch.Tensor) and _triton_eager(z, mask, algorithm) and plain_eager(value)
    ):
        return False
    recorded = torch.is_grad_enabled() and (z.requires_grad or value.requires_grad)
    return not recorded or z.dtype not in HALF_DTYPES or _triton().holds_on_chip(z)


def project_lin(
    z: torch.Tensor, lam: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(output, threshold, support)`` of ``sparsemax(z/(1 − λ))`` along the last dimension
    by the Triton kernels, which compute the scale from ``lam`` (one a row, broadcastable to
    ``(*z.shape[:-1], 1)``) themselves: NaN where λ is not < 1, which the caller has not
    checked (:func:`parameter_in_kernel` says where this applies)."""
    if torch.is_grad_enabled() and (z.requires_grad or lam.requires_grad):
        return _ProjectLinFunction.apply(z, lam, mask)
    output, tau, support, _ = _triton().project_triton(
        z, lam, None, keep_scale=False, mask=mask, lin=True
    )
    return in_layout(output, z), tau, support


class _ProjectConeFunction(torch.autograd.Function):
    """Sparsecone or sparsehourglass of a tensor q (or sum-normalization++, q the number 0:
    :func:`_cone_by_kernels`) by the Triton kernels, which compute each row's α, the factor
    of ``∂α/∂z`` and ``∂ log α/∂q`` from the scores' sum and keep them: the backward gives
    the scores' gradient in one launch and q's as its moment times ``∂ log α/∂q``. It keeps
    the output, not the scores (but for half ones: :func:`_kept_scores`), as the operator's
    autograd does; α is an output too, whose gradient (``∂α/∂z``, ``∂α/∂q``) double
    backward takes, as it runs the same formulas in torch ops (:func:`_cone_vjp_recorded`)."""

    @staticmethod
    def forward(ctx, z, q, mask, mirror):
        factor = torch.empty((*z.shape[:-1], 1), dtype=compute_dtype(z.dtype), device=z.device)
        slope = torch.empty_like(factor) if isinstance(q, torch.Tensor) else None  # (q's)
        output, tau, support, alpha = _cone_by_kernels(z, q, mirror, mask, factor, slope)
        ctx.mark_non_differentiable(tau, support)
        ctx.set_materialize_grads(False)  # (the threshold's and support's: None)
        ctx.number_q, tensor_q = (q, None) if isinstance(q, float) else (None, q)
        ctx.dtype = z.dtype
        kept = (output, support, alpha, factor, slope, mask, _kept_scores(z, output))
        ctx.save_for_backward(tensor_q, *kept)
        return output, tau, support, alpha

    @staticmethod
    def backward(ctx, grad, _tau, _support, grad_alpha):
        q, output, support, alpha, factor, slope, mask, z = ctx.saved_tensors
        q = q if ctx.number_q is None else ctx.number_q
        if grad is None and grad_alpha is None:
            return None, None, None, None
        given = [g for g in (grad, grad_alpha) if g is not None]
        if grad_alpha is not None or torch.is_grad_enabled() or not plain_eager(output, *given):
            kept = (output, support, alpha, factor, mask, z)
            grad_z, grad_q = _cone_vjp_recorded(*kept, q, grad, grad_alpha)
        else:
            vjp = _triton().cone_vjp_triton
            grad_z, grad_q = vjp(output, grad, alpha, factor, mask, q_slope=slope, scores=z)
            grad_z = in_layout(grad_z, output)
        grad_z = grad_z.to(ctx.dtype)  # (sum-normalization++'s ratio of half scores: float32)
        if not ctx.needs_input_grad[1]:
            return grad_z, None, None, None
        return grad_z, _rows_summed(grad_q, q), None, None


def _cone_vjp_recorded(
    output: torch.Tensor,
    support: torch.Tensor,
    alpha: torch.Tensor,
    factor: torch.Tensor,
    mask: torch.Tensor | None,
    z: torch.Tensor | None,
    q: torch.Tensor | float,
    grad: torch.Tensor | None,
    grad_alpha: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cone's two gradients in torch ops that autograd records: ``c·u`` plus ``f·c·m``
    at the kept entries and ``m · ∂ log α/∂q``, with ``u = J_sparsemaxᵀ g``, the moment
    ``m = Σ_S u_j (p_j − max p)`` (through the output; from the kept half scores ``z``
    where there are), ``c`` the kept α (an output of the
    forward: its derivatives come back to it), 0 where α is not finite, and ``f =
    −sign(Σz)/(1 + Kq)``, ``∂ log α/∂q = K(1 − α)/(1 + Kq)`` recomputed from q; plus
    ``∂α/∂z`` and ``∂α/∂q`` times ``grad_alpha``, α's own gradient."""
    kept = output.shape[-1] if mask is None else mask.expand(output.shape).sum(-1, keepdim=True)
    one_plus_kq = 1 + kept * q
    finite = torch.isfinite(alpha)
    c = torch.where(finite, alpha, 0.0)
    # (the sign of the sum, constant where it is defined, from the kept factor −sign/(1 + Kq))
    f = torch.where(finite, torch.sign(factor) / one_plus_kq, 0.0)
    log_slope = torch.where(finite, kept * (1 - c) / one_plus_kq, 0.0)
    grad = torch.zeros_like(output) if grad is None else grad
    u = _vjp(output, support, grad.to(c.dtype), None, triton=True)
    moment = _support_moment(u, output, support, c, z)
    per_row, grad_q = f * c * moment, moment * log_slope
    if grad_alpha is not None:
        per_row, grad_q = per_row + f * c * c * grad_alpha, grad_q + c * log_slope * grad_alpha
    term = per_row if mask is None else torch.where(mask, per_row, 0.0)
    return (u * c + term).to(output.dtype), grad_q


def _cone_by_kernels(z, q, mirror, mask, factor=None, q_slope=None):
    """``(output, tau, support, α)`` of sparsecone (``mirror``: sparsehourglass) by the
    Triton kernels (α None without a ``factor`` buffer to write, see
    :func:`~sparsegen._triton_projection.project_triton`), for a tensor ``q``, or ``q = 0``
    (a number) with ``mirror``, sum-normalization++: scale invariant, so its scores are
    divided by a power of two ``u`` first (the ratio transform, exact: tiny scores keep
    their ratios, where their sum would round), and α is that of the scores themselves,
    ``α̂(z/u)/u`` (the backward differentiates ``z``, not ``z/u``)."""
    scores, divisor = z, None
    if not isinstance(q, torch.Tensor):
        if not (q == 0 and mirror):
            raise ValueError("_cone_by_kernels: a number q is sum-normalization++'s 0")
        from sparsegen._triton_transform import transform_triton

        scores, divisor = transform_triton(z, mask, "ratio")
    output, tau, support, alpha = _triton().project_triton(
        scores, None, ConeScale(q, mirror), True, factor is not None, mask, factor=factor,
        q_slope=q_slope,
    )  # fmt: skip
    if divisor is not None and alpha is not None:
        alpha = alpha / divisor
    return in_layout(output, z), tau, support, alpha


def project_cone(
    z: torch.Tensor, q: torch.Tensor | float, mirror: bool, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(output, threshold, support)`` of sparsecone (``mirror``: sparsehourglass) along the
    last dimension by the Triton kernels, which compute α from ``q`` (one a row,
    broadcastable to ``(*z.shape[:-1], 1)``) and check it themselves: NaN rows where q is
    not finite and ≥ 0 (:func:`parameter_in_kernel` says where this applies); or
    sum-normalization++ (``q = 0.0``, ``mirror``: :func:`_cone_by_kernels`), in float32 for
    half scores (:func:`sum_normalization_in_kernel`)."""
    q_recorded = isinstance(q, torch.Tensor) and q.requires_grad
    if torch.is_grad_enabled() and (z.requires_grad or q_recorded):
        return _ProjectConeFunction.apply(z, q, mask, mirror)[:3]
    return _cone_by_kernels(z, q, mirror, mask)[:3]


def sum_normalization_in_kernel(z: torch.Tensor, mask: torch.Tensor | None, algorithm: str) -> bool:
    """Whether sum-normalization++ (sparsehourglass at q = 0) of ``z`` is
    :func:`project_cone`'s: a plain eager call that the Triton kernels run, of any floating
    dtype (the ratio transform writes float32 for half scores)."""
    return _triton_eager(z, mask, algorithm)


def _triton_eager(z: torch.Tensor, mask: torch.Tensor | None, algorithm: str) -> bool:
    """Whether a plain eager call on ``z`` runs the Triton kernels on rows they take."""
    return _eager_kernels(z, mask, algorithm) == "triton" and triton_row(z)


def _rows_summed(grad: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    """``grad``, one value a row, as the gradient of ``parameter``: where that is broadcast
    over rows, its rows' sum (no operation where it is one a row)."""
    return grad if grad.shape == parameter.shape else grad.sum_to_size(parameter.shape)


def transformed() -> bool:
    """Whether a ``torch.func`` transform or forward-mode AD records this call; both reads
    are traced by ``torch.compile`` too (where ``plain_eager``'s stack reads are not)."""
    return (
        torch._C._are_functorch_transforms_active() or torch.autograd.forward_ad._current_level >= 0
    )


def exporting() -> bool:
    """Whether ``torch.export`` traces this call. ``torch.compiler.is_exporting()`` says so,
    except that dynamo before torch 2.13 folds it to True under ``torch.compile`` too (so
    compiled graphs would take export's sort formulation): the flag it reads is read directly
    where it exists, which export sets, strict or not, and ``torch.compile`` does not."""
    return is_exporting() and getattr(torch.compiler, "_is_exporting_flag", True)


def _number_to_the_kernel(z: torch.Tensor, mask: torch.Tensor | None, algorithm: str) -> bool:
    """Whether a number scale goes to the Triton kernels as it is (as its bits: a tensor
    filled for it is a launch more): a plain eager call they run. Elsewhere it becomes a
    tensor, which the operator's schema takes."""
    return (
        algorithm == "triton"
        and not torch.compiler.is_compiling()
        and not exporting()
        and plain_eager(z, mask)
    )


def project(
    z: torch.Tensor,
    scale: Scale | float = None,
    algorithm: str = "auto",
    return_info: bool = True,
    mask: torch.Tensor | None = None,
) -> ProjectionResult | torch.Tensor:
    """Differentiable ``sparsemax(scale * z)`` along the last dimension, by the operator.

    ``scale`` is None, a positive (or NaN) tensor broadcastable to
    ``(*z.shape[:-1], 1)`` (a NaN scale makes its slice NaN), a positive float, or a
    :class:`~sparsegen._projection.ConeScale`. ``algorithm`` as in
    :func:`~sparsegen._projection.resolve_algorithm`. ``mask`` (boolean,
    broadcastable to ``z``, True = keep): the other entries are scores of -inf.

    Every call takes exactly one of five routes; all compute the same function,
    whose specification is :func:`~sparsegen._projection.project_torch`:

    ============== ========================================== =================================
    route          when                                       why
    ============== ========================================== =================================
    export         ``torch.export`` (and ONNX through it)     plain ATen ops (the sort
                                                              formulation): the program runs
                                                              without sparsegen
    operator       ``torch.compile``                          the operator and its registered
                                                              autograd trace as one node (on
                                                              CUDA its Triton twin, traced
                                                              into: inductor launches the
                                                              kernels)
    functorch      vmap/grad/jvp, forward AD, tracers,        a custom operator alone gives
                   tensor subclasses                          zero tangents under forward AD
    eager autograd plain eager, a gradient to record          ``_EagerProject``: the kernel
                                                              without the dispatcher's overhead
    eager kernel   plain eager, nothing to record             the kernel itself, the cheapest
    ============== ========================================== =================================
    """
    algorithm = resolve_algorithm(algorithm, z)
    if isinstance(scale, float) and not _number_to_the_kernel(z, mask, algorithm):
        scale = number_tensor(scale, compute_dtype(z.dtype), z.device)
    if isinstance(scale, ConeScale):
        cone, scale_from = scale, "hourglass" if scale.mirror else "cone"
        q, tensor_scale = (None, scale.q) if isinstance(scale.q, torch.Tensor) else (scale.q, None)
    else:
        cone, tensor_scale, scale_from, q = None, scale, "given", None
    args = (z, tensor_scale, scale_from, q, algorithm, mask)
    if exporting() or (torch.compiler.is_compiling() and transformed()):
        # torch.export (and ONNX through it) captures the exact sort formulation in
        # plain ATen ops: a program that runs without sparsegen, on any runtime. So does
        # torch.compile of a torch.func transform or of forward-mode AD, which the
        # operator cannot serve there: torch does not run its registered autograd inside
        # a transform being traced (pytorch/pytorch#168393), and forward mode gets zero
        # tangents from a custom operator.
        output, tau, support, _ = project_torch(z, tensor_scale, cone, "sort", mask, True)
    elif torch.compiler.is_compiling():  # the operator's own autograd is traced
        operator = torch.ops.sparsegen.project
        if algorithm == "triton" and _triton_traced():  # (resolved: z is one they take)
            operator = torch.ops.sparsegen.project_triton
        output, tau, support, _ = operator.default(*args)
    elif not plain_eager(z, None if isinstance(tensor_scale, float) else tensor_scale, mask):
        output, tau, support, _ = ProjectFunction.apply(*args)
    elif torch.is_grad_enabled() and (
        z.requires_grad or (isinstance(tensor_scale, torch.Tensor) and tensor_scale.requires_grad)
    ):
        output, tau, support, _ = _EagerProject.apply(*args)
    else:
        output, tau, support, _ = _project(
            z, tensor_scale, cone, algorithm, return_info, False, mask
        )
    return ProjectionResult(output, tau, support) if return_info else output
