r"""Attention with any mapping of the library: scaled dot-product and additive scores.

Attention turns scores into weights with a probability mapping; softmax gives
every position some weight, the sparse mappings give most of them exactly zero
(Martins & Astudillo 2016, §4.2; Laha et al. 2018, §5):

$$
\operatorname{attention}(Q, K, V) = \rho\big(s(Q, K)\big)\,V
$$

with scaled dot-product scores :math:`s = QK^\top/\sqrt{d}` or additive scores
:math:`s_t = v^\top \tanh(W k_t + U q + b)`, and :math:`\rho` any mapping.

Masks. Here, as in :func:`torch.nn.functional.scaled_dot_product_attention`, a
boolean mask is True where a position *takes part*; a float mask is added to
the scores, and its ``-inf`` entries exclude positions (it may hold no NaN or
``+inf``: a ``ValueError``, except on a CUDA device, where the check would wait for
the device, and the rows such entries touch follow the mapping's rules for NaN and
``+inf`` scores instead). So do its very negative finite entries: a value at most
:data:`EXCLUDING_BIAS`, ``-1e4`` (as rounded to the mask's dtype), excludes its position
as ``-inf`` does. Code written for softmax writes "excluded" as ``-1e4`` (BERT's),
``-1e9`` or ``finfo.min`` (Hugging Face ``transformers``) rather than ``-inf``, so that
softmax never sees a row of ``-inf``. Added as a bias, such a value would leave a fully
masked row uniform instead of empty, and worse where the mapping is not a function of
score differences alone: sparsegen-sq and spherical softmax square it into the largest
score, and sparsecone's and sparsehourglass's sum takes it in. No score a model
means is that large. :class:`sparsegen.nn.MultiheadAttention` follows
:class:`torch.nn.MultiheadAttention` instead (boolean True = *ignore*). A query
that may attend to nothing gets zero weights and a zero output, never NaN.

NaN. A NaN in a query, key or score makes NaN exactly the weights and outputs
that depend on it (that query's row; every row that scores that key) and
leaves the other rows finite; softmax without ``need_weights`` runs in torch's SDPA,
where a NaN key makes NaN every row of its head, masked or not.

The modules are in :mod:`sparsegen.nn` (``MultiheadAttention``,
``AdditiveAttention``).
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple, overload

import torch
import torch.nn.functional as torch_functional

from sparsegen import functional
from sparsegen._fused_attention import fused_attention
from sparsegen._ops import exporting, transformed
from sparsegen._projection import triton_installed, triton_interpreted
from sparsegen._validation import (
    Parameter,
    broadcastable,
    check_dense,
    check_lam,
    check_q,
    check_values,
    on_device,
    outside_stacklevel,
    slice_parameter,
)
from sparsegen.functional import sparsemax

__all__ = [
    "EXCLUDING_BIAS",
    "IMPLEMENTATIONS",
    "AttentionResult",
    "attend_fast",
    "combine_masks",
    "fused_mapping",
    "scaled_dot_product_attention",
    "split_mask",
]

Mapping = Callable[..., torch.Tensor]

# Float-mask values at or below this exclude their position (module docstring).
EXCLUDING_BIAS = -1e4
# ... as rounded to each dtype (bfloat16's -1e4 is -9984), so that a mask written as
# -1e4 in its own dtype excludes both in eager code, which compares in that dtype, and
# in inductor's, which compares in float32.
_EXCLUDING = {
    dtype: torch.tensor(EXCLUDING_BIAS, dtype=dtype).item()
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
}


class AttentionResult(NamedTuple):
    """An attention output with its weights and each query's support size.

    ``support_size`` counts the positions with nonzero weight (before dropout),
    with the weights' shape less the last dimension (None where not asked for).
    """

    output: torch.Tensor
    weights: torch.Tensor
    support_size: torch.Tensor | None


def split_mask(
    mask: torch.Tensor | None, *, true_means_ignore: bool, name: str
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A boolean or additive float mask as ``(keep, bias)``: keep is boolean, bias finite.

    A boolean mask gives ``keep`` (inverted when ``true_means_ignore``); a
    float mask gives ``keep = mask > EXCLUDING_BIAS`` (``-inf`` and values at most
    ``-1e4``, as rounded to the mask's dtype, exclude) and ``bias`` = the rest.
    """
    if mask is None:
        return None, None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a tensor; got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        return (~mask if true_means_ignore else mask), None
    if not mask.is_floating_point():
        raise TypeError(
            f"{name} must be boolean or floating point (added to the scores); got {mask.dtype}"
        )
    rule = f"{name}: a float mask may hold finite values and -inf only"
    if not on_device(mask):  # on a device the check would wait for it: NaN rows instead
        check_values(~(torch.isnan(mask) | (mask == math.inf)), ValueError, lambda: rule, rule)
    excluded = mask <= _EXCLUDING.get(mask.dtype, EXCLUDING_BIAS)
    return ~excluded, mask.masked_fill(excluded, 0.0)


def combine_masks(
    masks: list[tuple[torch.Tensor | None, torch.Tensor | None]],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """AND the ``keep`` parts and add the ``bias`` parts of several split masks."""
    keep = bias = None
    for part_keep, part_bias in masks:
        if part_keep is not None:
            keep = part_keep if keep is None else keep & part_keep
        if part_bias is not None:
            bias = part_bias if bias is None else bias + part_bias
    return keep, bias


def causal_keep(length: int, source_length: int, device: torch.device) -> torch.Tensor:
    """Query ``i`` may see keys ``j <= i`` (top-left aligned, as torch does)."""
    return torch.ones(length, source_length, dtype=torch.bool, device=device).tril()


def _check_masks(
    keep: torch.Tensor | None, bias: torch.Tensor | None, shape: Sequence[int]
) -> None:
    """Both masks broadcast to the scores' ``shape``."""
    for mask in (keep, bias):
        if mask is not None and not broadcastable(mask.shape, shape, onto=True):
            raise ValueError(
                f"attention mask of shape {tuple(mask.shape)} does not broadcast to the "
                f"scores' shape {tuple(shape)} (..., target length, source length)"
            )


def attend(
    scores: torch.Tensor,
    value: torch.Tensor,
    keep: torch.Tensor | None,
    bias: torch.Tensor | None,
    mapping: Mapping,
    dropout_p: float = 0.0,
    need_support: bool = False,
    groups: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``mapping(scores + bias, mask=keep) @ value``: the core every attention shares.

    Returns the output, the weights (after dropout, which keeps zeros zero) and,
    on request, the support sizes (before dropout). With ``groups > 1`` the
    scores' heads (dimension -3) come in groups of that many consecutive heads
    sharing one head of ``value`` (grouped-query attention), and ``value`` is
    broadcast to them, not copied.
    """
    _check_mapping(mapping, scores.dim())
    _check_masks(keep, bias, scores.shape)
    dtype = scores.dtype
    if bias is not None:  # (a wider bias: at its precision, as torch's SDPA and the fused kernel)
        wide = bias_dtype(scores.dtype, bias.dtype)
        scores = scores.to(wide) + bias.to(wide)
    weights = mapping(scores, mask=keep).to(dtype)
    support = (weights > 0).sum(-1) if need_support else None
    if dropout_p > 0.0:
        weights = torch_functional.dropout(weights, p=dropout_p)
    if groups == 1:
        return weights @ value, weights, support
    output = weights.unflatten(-3, (-1, groups)) @ value.unsqueeze(-3)
    return output.flatten(-4, -3), weights, support


def _query_groups(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> int:
    """How many query heads share each key/value head (dimension -3) under ``enable_gqa``."""
    if min(query.dim(), key.dim(), value.dim()) < 3:
        raise ValueError(
            "enable_gqa needs query, key and value with a head dimension (..., heads, length, "
            f"features); got shapes {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    heads, kv_heads = query.shape[-3], key.shape[-3]
    if value.shape[-3] != kv_heads or heads % kv_heads:
        raise ValueError(
            "enable_gqa needs as many key as value heads, dividing the query heads; got "
            f"{heads} query, {kv_heads} key and {value.shape[-3]} value heads"
        )
    return heads // kv_heads


def _check_leading(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, enable_gqa: bool
) -> None:
    """The dimensions before ``(L, E)`` broadcast (under GQA, the heads apart)."""
    leads = [query.shape[:-2], key.shape[:-2], value.shape[:-2]]
    if leads[0] == leads[1] == leads[2]:  # (the common case, at the cost of a comparison)
        return
    if enable_gqa:  # (checked to divide the query heads)
        leads[1:] = [(*lead[:-1], query.shape[-3]) for lead in leads[1:]]
    # (pairwise, which is jointly: torch.broadcast_shapes's dispatch costs as much as the
    # checks of a short call all together)
    if not all(broadcastable(*pair) for pair in itertools.combinations(leads, 2)):
        hint = ""
        heads = (query.shape[-3], key.shape[-3]) if min(query.dim(), key.dim()) >= 3 else (1, 1)
        if not enable_gqa and heads[0] != heads[1] and heads[0] % heads[1] == 0:
            hint = (
                f" ({heads[0]} query heads, {heads[1]} key heads: enable_gqa=True shares each "
                "key/value head among a group of query heads)"
            )
        shapes = ", ".join(str(tuple(t.shape)) for t in (query, key, value))
        raise ValueError(
            f"query, key and value must broadcast in the dimensions before their last two; got "
            f"shapes {shapes}{hint}"
        )


def bias_dtype(scores: torch.dtype, bias: torch.dtype) -> torch.dtype:
    """The dtype an additive mask is added in: the scores', unless the mask holds more
    digits (a float32 mask on half scores, as torch's SDPA takes it), then float32 (float64
    only for float64 scores). A float32 mask of 1000.3 and 1000.1 stays two values."""
    if torch.promote_types(scores, bias) == scores:
        return scores
    return torch.promote_types(scores, torch.float32)


def _check_mapping(mapping: Mapping, scores_dim: int) -> None:
    """A mapping that attention can call: a callable that normalises along the keys' (last)
    dimension of scores with ``scores_dim`` dimensions."""
    if isinstance(mapping, type):  # (MultiheadAttention builds one; here it would be called)
        raise TypeError(
            f"mapping must be a function or a module, not the class {mapping.__name__}: pass "
            f"{mapping.__name__}(), or its name to sparsegen.nn.mapping_module"
        )
    if isinstance(mapping, str) or not callable(mapping):
        raise TypeError(
            f"mapping must be a callable such as sparsegen.sparsemax or a sparsegen.nn module; "
            f"got {mapping!r} (sparsegen.nn.mapping_module turns a name into a module)"
        )
    dim = _function_of(mapping)[2]
    if isinstance(dim, int) and scores_dim > 0 and dim % scores_dim != scores_dim - 1:
        raise ValueError(
            f"the attention's mapping normalises along dim={dim}; attention weights are "
            "normalised along the keys, the last dimension (dim=-1)"
        )


def _autocast(device_type: str) -> bool:
    """Whether autocast is on for the device (it casts query, key and value, as for torch's
    function); False for a device it does not know (meta)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def _check_inputs(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout_p: float
) -> None:
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            kind = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise TypeError(
                f"scaled_dot_product_attention: {name} must be a floating-point tensor; got {kind}"
            )
        check_dense(tensor, "scaled_dot_product_attention")  # (MultiheadAttention pads nested)
    if query.ndim < 1 or key.ndim < 2 or value.ndim < 2:
        raise ValueError(
            "key and value must be at least 2-D, (..., S, E), and query at least 1-D; got "
            f"shapes {tuple(query.shape)}, {tuple(key.shape)} and {tuple(value.shape)}"
        )
    if not query.dtype == key.dtype == value.dtype and not _autocast(query.device.type):
        raise ValueError(
            f"query, key and value must have the same dtype; got {query.dtype}, {key.dtype} "
            f"and {value.dtype}"
        )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"query and key must share their last dimension; got {query.shape[-1]} "
            f"and {key.shape[-1]}"
        )
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"key and value must have the same length; got {key.shape[-2]} and {value.shape[-2]}"
        )
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be in [0, 1]; got {dropout_p}")


def check_implementation(implementation: str) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}; got {implementation!r}")


def _scaled_scores(
    query: torch.Tensor, key: torch.Tensor, scale: float, groups: int
) -> torch.Tensor:
    """``QKᵀ · scale``, ``(..., H, L, S)``; with ``groups`` query heads per key head, the
    queries as ``(..., Hkv, G, L, E)`` against keys ``(..., Hkv, 1, S, E)``: each key
    head serves its group by broadcasting, never repeated in memory."""
    if groups == 1:
        return (query * scale) @ key.transpose(-2, -1)
    grouped = query.unflatten(-3, (-1, groups)) * scale
    return (grouped @ key.unsqueeze(-3).transpose(-2, -1)).flatten(-4, -3)


# ----- the fast paths: torch's SDPA for softmax, the fused kernel for the sparse family --

IMPLEMENTATIONS = ("auto", "fused", "unfused")
"""The values of :func:`scaled_dot_product_attention`'s ``implementation=``."""
FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The largest head dim whose tiles fit on chip.
MAX_FUSED_HEAD_DIM = 256
_warned: set[str] = set()


class FusedMapping(NamedTuple):
    """A mapping as the fused kernel computes it: sparsemax of ``c · scores`` with ``c``
    given (``mode="given"``: ``1/(1 − λ)``, sparsemax's 1 where ``parameter`` is None) or
    the cone's (``"cone"``, ``"hourglass"``: ``parameter`` is q); sparsemax of ``c ·
    e^scores`` (``"exp"``, sparsegen-exp) or of ``c · scores²`` (``"sq"``, sparsegen-sq),
    ``parameter`` λ; or ``"softmax"``. ``parameter`` is the mapping's own, unchecked until
    the kernel takes it (:func:`_kernel_parameter`); ``name`` names the mapping there."""

    mode: str
    parameter: float | torch.Tensor | None
    name: str = ""


def fused_mapping(mapping: Mapping, scores_dim: int | None = None) -> FusedMapping | None:
    """``mapping`` as the fused kernel's mode and parameter, or None where it has none: sparsemax
    of an affine function of the scores, of their exponential or square (sparsegen-exp,
    -sq), or softmax.

    Recognised: :func:`~sparsegen.sparsemax`, :func:`~sparsegen.sparsegen_lin`,
    :func:`~sparsegen.sparsegen_exp`, :func:`~sparsegen.sparsegen_sq`,
    :func:`~sparsegen.sparsecone`, :func:`~sparsegen.sparsehourglass` and
    :func:`~sparsegen.softmax`, as functions, ``functools.partial`` of them (with their
    parameter, and at most a ``dim`` naming the scores' last dimension: -1, or ``scores_dim
    − 1`` where the scores have ``scores_dim`` dimensions) or modules of :mod:`sparsegen.nn`.
    """
    function, keywords, dim = _function_of(mapping)
    last = dim == -1 or (scores_dim is not None and dim == scores_dim - 1)
    if not last:
        return None
    if function is sparsemax and not keywords:
        return FusedMapping("given", None)
    if function is functional.softmax and not keywords:
        return FusedMapping("softmax", None)
    lam_modes = {
        functional.sparsegen_lin: "given",
        functional.sparsegen_exp: "exp",
        functional.sparsegen_sq: "sq",
    }
    if function in lam_modes and set(keywords) <= {"lam"}:
        return FusedMapping(lam_modes[function], keywords.get("lam", 0.0), function.__name__)
    if function in (functional.sparsecone, functional.sparsehourglass) and set(keywords) <= {"q"}:
        q = keywords.get("q", 1.0)
        if isinstance(q, float) and q == math.inf:  # the sparsemax limit
            return FusedMapping("given", None)
        mode = "cone" if function is functional.sparsecone else "hourglass"
        return FusedMapping(mode, q, function.__name__)
    return None


def _kernel_parameter(plan: FusedMapping) -> Parameter | None:
    """What the kernel takes of the mapping's parameter, checked as the mapping checks it:
    q for the cones, ``1/(1 − λ)`` for the others."""
    if plan.parameter is None:
        return None
    if plan.mode in ("cone", "hourglass"):
        return check_q(plan.parameter, plan.name)
    return 1.0 / (1.0 - check_lam(plan.parameter, plan.name))


def _function_of(mapping: Mapping) -> tuple[Callable, dict, int]:
    """``(function, keyword arguments, dim)`` of a function, a partial or a mapping module."""
    if isinstance(mapping, functools.partial) and not mapping.args:
        keywords = dict(mapping.keywords)
        return mapping.func, keywords, keywords.pop("dim", -1)
    function = getattr(mapping, "function", None)
    if isinstance(mapping, torch.nn.Module) and callable(function) and _calls_its_function(mapping):
        parameter = getattr(mapping, "parameter", None)
        keywords = {parameter: getattr(mapping, parameter)} if parameter else {}
        return function, keywords, getattr(mapping, "dim", -1)
    return mapping, {}, -1


def _calls_its_function(module: torch.nn.Module) -> bool:
    """Whether calling ``module`` computes its ``function`` and nothing else: a mapping
    module of :mod:`sparsegen.nn` whose ``forward`` no subclass overrides and that no
    hook, forward or backward, watches (a fused kernel runs the function, not the module)."""
    from torch.nn.modules import module as torch_module

    hooks = (
        module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
        module._backward_pre_hooks, torch_module._global_forward_hooks,
        torch_module._global_forward_pre_hooks, torch_module._global_backward_hooks,
        torch_module._global_backward_pre_hooks,
    )  # fmt: skip
    return type(module).forward.__module__ == "sparsegen.nn.mappings" and not any(hooks)


def _why_not_fused(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bias: torch.Tensor | None,
    plan: FusedMapping | None,
    dropout_p: float,
    forced: bool,
) -> str | None:
    """Why the fused kernel cannot compute this attention, or None where it can (on CPU
    tensors only under Triton's interpreter, and under ``torch.export``, only when
    ``forced``)."""
    dims = max(query.shape[-1], value.shape[-1])
    reasons = (
        (plan is None, "its mapping is not sparsemax, sparsegen-lin/-exp/-sq, sparsecone, "
         "sparsehourglass or softmax (as a function, a partial or a sparsegen.nn module "
         "that no subclass or hook changes)"),
        (len({query.dtype, key.dtype, value.dtype}) > 1 or query.dtype not in FUSED_DTYPES,
         f"its dtypes {query.dtype}, {key.dtype}, {value.dtype} (it takes float16, bfloat16 "
         "or float32 query, key and value of one dtype)"),
        (dims > MAX_FUSED_HEAD_DIM, f"head dim {dims} > {MAX_FUSED_HEAD_DIM}"),
        (dropout_p >= 1.0, "dropout_p = 1 (it rescales what dropout keeps by 1/(1 − p); "
         "every weight dropped, the unfused path gives the zeros)"),
        (min(query.dim(), key.dim(), value.dim()) < 3,
         "inputs without a head dimension (it takes (..., heads, length, features))"),
        (bias is not None and bias.requires_grad,
         "an attn_mask that requires grad (the kernel gives the mask no gradient)"),
        (not (query.is_cuda or (forced and query.is_cpu and triton_interpreted())),
         f"{query.device.type} tensors (it runs on CUDA, or on CPU under TRITON_INTERPRET=1)"),
        (not triton_installed(), "triton is not installed (pip install 'sparsegen[triton]')"),
        (transformed(),
         "a torch.func transform (grad, vmap, jvp, …) or forward-mode AD, which the fused "
         "operator does not take"),
        (exporting() and not forced,
         "torch.export, whose program should run without sparsegen's kernels (as its "
         "projection does); implementation='fused' captures the fused operator instead"),
    )  # fmt: skip
    return next((reason for failed, reason in reasons if failed), None)


def attend_fast(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    keep: torch.Tensor | None,
    bias: torch.Tensor | None,
    mapping: Mapping,
    *,
    dropout_p: float,
    is_causal: bool,
    scale: float,
    enable_gqa: bool,
    implementation: str,
) -> torch.Tensor | None:
    """The attention output without the ``(L, S)`` weights: torch's fused SDPA for
    softmax, the fused sparse kernel for the rest of the family, or None where neither
    applies under ``implementation="auto"`` (``"fused"`` raises instead, naming why).

    ``keep``/``bias``: the masks as :func:`split_mask` gives them (``is_causal`` apart).
    """
    scores_dim = len(_scores_shape(query, key, enable_gqa))
    _check_mapping(mapping, scores_dim)
    plan = fused_mapping(mapping, scores_dim)
    if plan is not None and plan.mode == "softmax":
        # torch's fused SDPA kernels have no forward-mode derivative, nor take a 1-D query
        if _forward_mode() or query.dim() < 2:
            return None
        return _softmax_attention(
            query, key, value, keep, bias, dropout_p, is_causal, scale, enable_gqa
        )
    reason = _why_not_fused(query, key, value, bias, plan, dropout_p, implementation == "fused")
    if reason is None:
        return _fused(query, key, value, keep, bias, plan, is_causal, scale, enable_gqa, dropout_p)
    if implementation == "fused":
        raise ValueError(f"implementation='fused' cannot compute this attention: {reason}")
    if query.is_cuda and reason not in _warned:
        _warned.add(reason)
        warnings.warn(
            f"sparsegen attention falls back to the unfused path, which builds the (L, S) "
            f"scores: {reason}",
            stacklevel=outside_stacklevel(),
        )
    return None


def _forward_mode() -> bool:
    """Whether forward-mode AD records: dual tensors, or ``torch.func.jvp``/``jacfwd`` at
    any depth of the transforms (under ``jacfwd(jacrev(f))`` the innermost is a grad)."""
    if torch.autograd.forward_ad._current_level >= 0:  # (a read torch.compile traces too)
        return True
    if torch.compiler.is_compiling():  # (dynamo cannot read the stack)
        return False
    stack = torch._C._functorch.get_interpreter_stack() or []
    return any(i.key() == torch._C._functorch.TransformType.Jvp for i in stack)


def _softmax_attention(query, key, value, keep, bias, dropout_p, is_causal, scale, enable_gqa):
    """Softmax attention by :func:`torch.nn.functional.scaled_dot_product_attention` (its
    fused kernels), with this module's conventions: a query that keeps no key gives zeros,
    and masks are checked, and broadcast from fewer than two dimensions, as the others'."""
    scores = _scores_shape(query, key, enable_gqa)
    _check_masks(keep, bias, scores)
    keep, bias = _at_least_2d(keep), _at_least_2d(bias)
    if bias is not None:  # (torch's SDPA takes a float32 mask or the query's dtype only)
        bias = bias.to(bias_dtype(query.dtype, bias.dtype))
    if key.shape[-2] == 0:  # zeros, in the graph as every mapping's are: sums of no entry
        value_lead = value.shape[:-2]
        if enable_gqa:  # (the query's heads)
            value_lead = (*value_lead[:-1], query.shape[-3])
        shape = torch.broadcast_shapes(query.shape[:-1], (*value_lead, query.shape[-2]))
        nothing = query[..., :0].sum() + key.sum() + value.sum()  # exactly 0, even beside NaN
        return query.new_zeros(*shape, value.shape[-1]) + nothing
    alive = None
    if is_causal and keep is not None:
        keep = keep & causal_keep(query.shape[-2], key.shape[-2], query.device)
        is_causal = False
    if keep is not None:
        alive = keep.any(-1, keepdim=True)
        keep = keep | ~alive  # a dead row attends anywhere, then is zeroed (no NaN)
    mask = keep if bias is None else bias if keep is None else bias.masked_fill(~keep, -math.inf)
    output = torch_functional.scaled_dot_product_attention(
        query, key, value, mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa
    )
    return output if alive is None else output.masked_fill(~alive, 0.0)


def _scores_shape(query: torch.Tensor, key: torch.Tensor, enable_gqa: bool) -> torch.Size:
    """The shape of the scores ``QKᵀ``, ``(..., H, L, S)`` (with GQA, the query's heads; a
    1-D query, as in ``query @ keyᵀ``, gives scores without ``L``)."""
    key_lead = key.shape[:-2]
    if enable_gqa and key.dim() >= 3:
        key_lead = (*key.shape[:-3], query.shape[-3])
    lead = torch.broadcast_shapes(query.shape[:-2], key_lead)
    return torch.Size((*lead, *query.shape[-2:-1], key.shape[-2]))


def _at_least_2d(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A mask of one key row ``(S,)`` (or a 0-d one) as ``(1, S)``, which torch's SDPA takes."""
    if mask is None or mask.dim() >= 2:
        return mask
    return mask.reshape((1,) * (2 - mask.dim()) + tuple(mask.shape))


def _finite_scale(scale: object) -> bool:
    """Whether ``scale`` is a finite number (q·k × inf is ±inf, but (q × inf)·k sums to NaN);
    by comparisons, which unlike ``math.isfinite`` take a compiled call's symbolic float
    too. Anything else is a ``TypeError`` naming ``scale``."""
    try:
        return -math.inf < scale < math.inf  # type: ignore[operator]
    except TypeError:
        raise TypeError(f"scale must be a number; got {type(scale).__name__}") from None


def _fused(query, key, value, keep, bias, plan, is_causal, scale, enable_gqa, dropout_p):
    """The fused kernel on ``(B, H, L, E)`` views of the inputs (leading dims broadcast and
    flattened), the masks and the mapping's parameter one per query."""
    length, source = query.shape[-2], key.shape[-2]
    lead = torch.broadcast_shapes(query.shape[:-3], key.shape[:-3], value.shape[:-3])
    if enable_gqa:
        heads, kv_heads = query.shape[-3], key.shape[-3]
    else:  # (one query head may meet several key/value heads, as in torch's function)
        heads = kv_heads = torch.broadcast_shapes(*(t.shape[-3:-2] for t in (query, key, value)))[0]
    scores = (*lead, heads, length, source)

    def flat(t: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor | None:
        return None if t is None else t.expand(*shape).reshape(lead.numel(), *shape[-3:])

    _check_masks(keep, bias, scores)
    output = fused_attention(
        flat(query, (*lead, heads, length, query.shape[-1])),
        flat(key, (*lead, kv_heads, source, key.shape[-1])),
        flat(value, (*lead, kv_heads, source, value.shape[-1])),
        flat(keep, scores),
        flat(bias, scores),
        _per_query(_kernel_parameter(plan), scores, query.device),
        plan.mode,
        is_causal,
        scale,
        dropout_p,
    )
    return output.reshape(*lead, heads, length, value.shape[-1])


def _per_query(parameter, scores: tuple[int, ...], device: torch.device) -> torch.Tensor | None:
    """The mapping's parameter as a float32 ``(B, H, L)`` view, one value per query."""
    if parameter is None:
        return None
    like = torch.empty((), dtype=torch.float32, device=device).expand(*scores)
    value = slice_parameter(parameter, like, -1, "parameter", "attention")
    if not isinstance(value, torch.Tensor):  # filled on the device: no copy to wait for
        beyond = abs(value) > torch.finfo(torch.float32).max  # (the kernel's limit: ∞)
        value = torch.full((), math.copysign(math.inf, value) if beyond else value,
                           dtype=torch.float32, device=device)  # fmt: skip
    per_query = value.expand(*scores[:-1], 1).select(-1, 0)
    return per_query.reshape(math.prod(scores[:-3]), *scores[-3:-1])


# fmt: off
@overload  # (for type checkers: a tensor, or an AttentionResult with the weights)
def scaled_dot_product_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
    scale: float | None = None, enable_gqa: bool = False, *, mapping: Mapping = sparsemax,
    need_weights: Literal[False] = False, need_support: bool = True,
    implementation: str = "auto",
) -> torch.Tensor: ...
@overload
def scaled_dot_product_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
    scale: float | None = None, enable_gqa: bool = False, *, mapping: Mapping = sparsemax,
    need_weights: Literal[True], need_support: bool = True, implementation: str = "auto",
) -> AttentionResult: ...
@overload  # a flag known only at run time
def scaled_dot_product_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
    scale: float | None = None, enable_gqa: bool = False, *, mapping: Mapping = sparsemax,
    need_weights: bool = False, need_support: bool = True, implementation: str = "auto",
) -> torch.Tensor | AttentionResult: ...
# fmt: on


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    mapping: Mapping = sparsemax,
    need_weights: bool = False,
    need_support: bool = True,
    implementation: str = "auto",
) -> torch.Tensor | AttentionResult:
    r"""Scaled dot-product attention with any mapping, like ``torch``'s but sparse by default.

    $$
    \operatorname{mapping}\big(QK^\top \cdot \mathrm{scale} + M\big)\,V
    $$

    Parameters
    ----------
    query, key, value : Tensor
        Shapes ``(..., L, E)``, ``(..., S, E)`` and ``(..., S, Ev)``; leading
        dimensions broadcast.
    attn_mask : Tensor, optional
        Boolean (True = take part) or float (added; ``-inf``, and any value
        ``<= -1e4`` (:data:`EXCLUDING_BIAS`), excludes), broadcastable to ``(..., L, S)``.
    dropout_p : float
        Dropout on the weights (always applied when > 0, as in torch's function).
    is_causal : bool
        Query ``i`` sees keys ``j <= i`` only (combined with ``attn_mask``).
    scale : float, optional
        Defaults to ``1/sqrt(E)``.
    enable_gqa : bool
        Grouped-query attention, as in torch's function: ``key`` and ``value``
        may have ``Hkv`` heads (dimension -3, the same for both, where torch's also
        takes two counts) for the query's ``H``, a multiple of ``Hkv``; query head
        ``h`` attends with key/value head ``h // (H / Hkv)``. The key/value heads are
        broadcast, not repeated in memory. The weights (and ``attn_mask``) have the
        query's ``H`` heads.
    mapping : callable
        ``mapping(scores, mask=keep)`` along the last dimension: any function of
        the library (``sparsegen.sparsemax``, ``functools.partial(
        sparsegen.sparsegen_lin, lam=0.5)``, …) or a module of :mod:`sparsegen.nn`.
    need_weights : bool
        Return an :class:`AttentionResult` ``(output, weights, support_size)``
        instead of the output alone.
    need_support : bool
        With ``need_weights``, count each query's support; ``support_size`` is
        None without it (one pass over the weights saved).
    implementation : {"auto", "fused", "unfused"}
        ``"fused"``: the output without the ``(L, S)`` weights ever existing, by
        torch's own fused SDPA for softmax and by the fused Triton kernel
        (:mod:`sparsegen._triton_attention`: exact threshold, skipped tiles, its own
        backward) for sparsemax, sparsegen-lin (λ a float, one per head or learnt),
        sparsegen-exp, sparsegen-sq, sparsecone and sparsehourglass, on CUDA (or on
        CPU tensors under ``TRITON_INTERPRET=1``) in float16, bfloat16 and float32
        (computed in full float32, or in TF32 where
        ``torch.backends.cuda.matmul.allow_tf32`` says so), head dims up to 256, any
        masks, GQA; ``ValueError`` naming why where it cannot (``need_weights``,
        another mapping, float64, a mask requiring grad, a ``torch.func``
        transform). Dropout is drawn in the kernel (Philox, seeded from torch's
        generator for the inputs' device, a new mask at each call and each CUDA graph
        replay), not as the unfused path draws it. ``"unfused"``: the scores,
        then ``mapping``. ``"auto"``: fused where it applies on CUDA (softmax:
        everywhere), else unfused, with a one-time warning on CUDA naming why;
        unfused under ``torch.export``, whose program then runs (and converts to
        ONNX) without sparsegen, as the projection's does (``"fused"`` exports the
        operator).

    Returns
    -------
    Tensor of shape ``(..., L, Ev)``, or an :class:`AttentionResult`.
    """
    _check_inputs(query, key, value, dropout_p)
    check_implementation(implementation)
    if is_causal and query.dim() < 2:
        raise ValueError(
            f"is_causal needs queries with a length dimension (..., L, E); got a query of shape "
            f"{tuple(query.shape)}"
        )
    if need_weights and implementation == "fused":
        raise ValueError("implementation='fused' never builds the weights that need_weights asks")
    if scale is None:  # (no features: every score is 0, whatever the scale)
        scale = 1.0 / math.sqrt(query.shape[-1]) if query.shape[-1] else 1.0
    elif not _finite_scale(scale):
        raise ValueError(f"scale must be a finite number; got {scale}")
    groups = _query_groups(query, key, value) if enable_gqa else 1
    _check_leading(query, key, value, enable_gqa)
    mask_parts = split_mask(attn_mask, true_means_ignore=False, name="attn_mask")
    if implementation != "unfused" and not need_weights:
        output = attend_fast(
            query, key, value, *mask_parts, mapping, dropout_p=dropout_p,
            is_causal=is_causal, scale=scale, enable_gqa=enable_gqa, implementation=implementation,
        )  # fmt: skip
        if output is not None:
            return output
    scores = _scaled_scores(query, key, scale, groups)
    parts = [mask_parts]
    if is_causal:
        parts.append((causal_keep(query.shape[-2], key.shape[-2], query.device), None))
    keep, bias = combine_masks(parts)
    output, weights, support = attend(
        scores, value, keep, bias, mapping, dropout_p, need_weights and need_support, groups
    )
    return AttentionResult(output, weights, support) if need_weights else output
