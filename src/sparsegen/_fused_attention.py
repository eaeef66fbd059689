r"""The fused sparse attention as PyTorch operators, with its autograd.

``sparsegen::attention(q, k, v, keep, bias, param, mode, causal, scale, dropout_p, seed)``
    ``-> (output, *stats)``: ``sparsemax(c_i s_i) V`` per query, by the Triton kernels
    of :mod:`sparsegen._triton_attention` (their docstring holds the algorithm), with
    ``q`` ``(B, H, L, E)``, ``k`` ``(B, Hkv, S, E)``, ``v`` ``(B, Hkv, S, Ev)``, ``keep``
    (bool) and ``bias`` ``(B, H, L, S)`` views or None, ``param`` a ``(B, H, L)`` view
    of each query's scale (``mode="given"``; ``"exp"`` and ``"sq"``: ``1/(1 − λ)``, which
    the kernel multiplies by ``e^m`` or ``M²``) or q (``"cone"``, ``"hourglass"``) or None;
    dropout on the weights where ``dropout_p > 0``, its random numbers drawn from ``seed``:
    an int64 tensor on the inputs' device, which the kernels read there. It is drawn by
    torch's generator for that device, so that ``torch.compile`` traces the draw and a CUDA
    graph's replay draws anew (a seed passed by value would repeat one mask), and reading it
    never waits for the device.
``sparsegen::attention_backward(...)``
    ``-> (dq, dk, dv)`` from the output's gradient and the saved statistics.

Both are opaque to ``torch.compile`` (custom operators with fake kernels), so a compiled
model keeps the fused kernels. The backward's per-query terms are plain torch code
here: ``δ_i = dO_i · V̄_i`` (``V̄_i`` the support's mean value) and the scale's gradient
``(dO_i · O_i − δ_i)/c_i``, which becomes λ's or q's gradient by autograd through the
caller's ``param`` (and, for the cone, ``ε_i``, its scale's dependence on every kept
score).
"""

from __future__ import annotations

import torch

__all__ = ["fused_attention"]


def _attention_kernels():
    """The Triton kernels' module, imported on first use: importing triton takes a second."""
    from sparsegen import _triton_attention

    return _triton_attention


@torch.library.custom_op("sparsegen::attention", mutates_args=())
def _attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor | None,
    bias: torch.Tensor | None,
    param: torch.Tensor | None,
    mode: str,
    causal: bool,
    scale: float,
    dropout_p: float,
    seed: torch.Tensor | None,
) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
]:  # fmt: skip
    dropout = (seed, dropout_p)  # (the kernels' launch reads no seed without dropout)
    output, stats = _attention_kernels().attention_forward(
        q, k, v, keep, bias, param, mode, causal, scale, dropout
    )
    return (output, *stats)


@_attention.register_fake
def _attention_fake(q, k, v, keep, bias, param, mode, causal, scale, dropout_p, seed):
    batch, heads, length, _ = q.shape
    per_query = [
        q.new_empty(batch, heads, length, dtype=d) for d in _attention_kernels().STAT_DTYPES
    ]
    vmean = q.new_empty(batch, heads, length, v.shape[-1])
    block_max = q.new_empty(_attention_kernels().block_max_shape(q, k, v), dtype=torch.float32)
    return (q.new_empty(batch, heads, length, v.shape[-1]), *per_query, vmean, block_max)


@torch.library.custom_op("sparsegen::attention_backward", mutates_args=())
def _attention_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor | None,
    bias: torch.Tensor | None,
    stats: list[torch.Tensor],
    delta: torch.Tensor,
    eps: torch.Tensor | None,
    causal: bool,
    scale: float,
    dropout_p: float,
    seed: torch.Tensor | None,
    mode: str,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kernels = _attention_kernels()
    stats = kernels.AttentionStats(*stats)
    dropout = (seed, dropout_p)  # (the kernels' launch reads no seed without dropout)
    return kernels.attention_backward(
        grad, q, k, v, keep, bias, stats, delta, eps, causal, scale, dropout, mode, precision
    )


@_attention_backward.register_fake
def _attention_backward_fake(
    grad, q, k, v, keep, bias, stats, delta, eps, causal, scale, dropout_p, seed, mode, precision
):
    dense = torch.contiguous_format  # as the kernels write them
    return tuple(torch.empty_like(t, memory_format=dense) for t in (q, k, v))


def _setup(ctx, inputs, output):
    q, k, v, keep, bias, param, mode, causal, scale, dropout_p, seed = inputs
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(q, k, v, keep, bias, param, seed, *output)
    ctx.mode, ctx.causal, ctx.scale, ctx.dropout_p = mode, causal, scale, dropout_p
    # the backward recomputes the scores as the forward computed them, whatever torch's TF32
    # switch says by then (under torch.compile the switch is guarded: this read is the
    # forward's)
    ctx.precision = _attention_kernels().precision(q.device, q.dtype)


def _backward(ctx, grad, *_stats_grads):
    q, k, v, keep, bias, param, seed, output, *stats = ctx.saved_tensors
    top, c, _, support, total, kept, vmean, _ = stats
    grad = grad.contiguous()
    delta = (grad.float() * vmean.float()).sum(-1)
    # c ∂L/∂c_i (c the scale of the gaps); zero where a query has no support (it keeps
    # nothing, or it is NaN) and where its weight sits on +inf scores (no scale moves it)
    degenerate = (support == 0) | (top == torch.inf)
    scaled = ((grad.float() * output.float()).sum(-1) - delta).masked_fill(degenerate, 0.0)
    eps = grad_param = None
    if ctx.mode in ("given", "exp", "sq"):  # c = param, or param · e^m, param · M²
        if param is not None and ctx.needs_input_grad[5]:
            grad_param = scaled / (c if ctx.mode == "given" else param)
    else:
        eps, grad_q = _cone_gradients(ctx.mode, scaled / c, c, total, kept, param)
        eps = eps.float()  # (float64, from the cone's sum: the kernels read float32)
        grad_param = grad_q.to(param.dtype) if ctx.needs_input_grad[5] else None
    dq, dk, dv = _attention_backward(
        grad, q, k, v, keep, bias, stats, delta, eps, ctx.causal, ctx.scale, ctx.dropout_p, seed,
        ctx.mode, ctx.precision,
    )  # fmt: skip
    return dq, dk, dv, None, None, grad_param, None, None, None, None, None


def _cone_gradients(mode, grad_c, c, total, kept, q):
    """``(ε, ∂L/∂q)`` of the cone's scale ``c = (1 + Kq)/(σ + Kq)``, ``σ = Σ_j s_ij``
    (``|Σ_j s_ij|`` for the hourglass): ``∂c/∂s_ij = −c σ'/(σ + Kq)`` on every kept entry,
    ``∂c/∂q = K (σ − 1)/(σ + Kq)²``; zero where q is infinite (c = 1), and for a query
    outside the cone's domain (c NaN: its output is NaN, and it passes no gradient of its
    own, where ε times NaN would reach every key of its head)."""
    sigma = total.abs() if mode == "hourglass" else total
    sign = torch.sign(total) if mode == "hourglass" else 1.0
    denominator = sigma + kept * q
    finite = torch.isfinite(q) & (kept > 0) & torch.isfinite(c) & torch.isfinite(grad_c)
    eps = torch.where(finite, -grad_c * c * sign / denominator, 0.0)
    grad_q = torch.where(finite, grad_c * kept * (sigma - 1.0) / denominator**2, 0.0)
    return eps, grad_q


_attention.register_autograd(_backward, setup_context=_setup)


def _no_second_derivative(ctx, *grads):
    raise RuntimeError(
        "sparsegen's fused attention kernel has no second derivative (a gradient of its "
        "gradient, as create_graph=True asks); implementation='unfused' computes one"
    )


# (without it, torch's own message: "no autograd formula was registered")
_attention_backward.register_autograd(_no_second_derivative)


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor | None,
    bias: torch.Tensor | None,
    param: torch.Tensor | None,
    mode: str,
    causal: bool,
    scale: float,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """The output of ``sparsegen::attention`` (arguments as there; the dropout's seed drawn
    by torch's generator for the inputs' device)."""
    seed = torch.randint(2**62, (), dtype=torch.int64, device=q.device) if dropout_p > 0 else None
    return torch.ops.sparsegen.attention(
        q, k, v, keep, bias, param, mode, causal, scale, dropout_p, seed
    )[0]
