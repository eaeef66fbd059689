"""Elementwise math the Triton kernels share and Triton's language lacks."""

import triton
import triton.language as tl

__all__ = ["expm1"]

_INF = tl.constexpr(float("inf"))


@triton.jit
def expm1(x):
    """``e^x − 1`` to a few ulps also near 0, where a support under a large scale lies
    (Kahan's ``(u − 1) x / log u``, ``u = e^x`` rounded); ``-1`` at ``-inf`` and where
    ``e^x`` underflows, ``inf`` where it overflows, NaN at NaN."""
    u = tl.exp(x)
    edge = (u == 1.0) | (u == 0.0) | (u == _INF)
    kahan = (u - 1.0) * x / tl.log(tl.where(edge, 2.0, u))
    return tl.where(u == 1.0, x, tl.where(u == 0.0, -1.0, tl.where(u == _INF, u, kahan)))
