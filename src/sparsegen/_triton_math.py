"""The math the Triton kernels share: what Triton's language lacks (``expm1``, a correctly
rounded float32 division), the gap transforms of sparsegen-exp, sparsegen-sq and
sum-normalization++ (their rules in :mod:`sparsegen._triton_transform`), sparsecone's and
sparsehourglass's scale, and Michelot's (Newton's) threshold step, which the projection
and the attention kernels all take."""

import triton
import triton.language as tl

__all__ = [
    "cone_alpha",
    "cone_factor",
    "cone_q_slope",
    "divide",
    "expm1",
    "gap_key",
    "gap_transform",
    "michelot",
    "michelot_step",
    "newton_threshold",
    "number_of_bits",
    "power_of_two_at_most",
    "square_gap",
    "transform_derivative",
    "usable_top",
]

_MANY = tl.constexpr(2**31 - 1)  # more than any support


@triton.jit
def divide(a, b):
    """``a / b`` rounded to nearest, as the CPU kernels divide: compiled, float32's ``/``
    is an approximate division (within 2 ulp), which would move τ = (Σ − 1)/|S| off the
    CPU's and the support at ties with it; float64's ``/`` is already exact."""
    if b.dtype == tl.float32:
        return tl.div_rn(a, b)
    return a / b


@triton.jit
def newton_threshold(total, count, CT: tl.constexpr):
    """Newton's (Michelot's) step ``τ = (Σ − 1)/n`` from the float64 sum ``total`` of the
    ``count`` gaps above the last τ, rounded once to ``CT``: the CPU kernel's rounding, so
    that an entry tied at τ falls on the same side (a float32 sum can put τ an ulp below
    it)."""
    return ((total - 1.0) / count.to(tl.float64)).to(CT)


@triton.jit
def michelot_step(tau, count, total, n, live, CT: tl.constexpr):
    """One step from the float64 sum ``total`` and count ``n`` of the gaps over ``tau``:
    :func:`newton_threshold` for the ``live`` rows whose support shrank; ``(τ, count,
    moved)``. A step counts only where the support shrinks, so a loop of them ends, whatever
    rounding does at a tie, keeping the τ of the last step that shrank the support (the
    CPU kernel's rule)."""
    moved = live & (n < count)
    tau = tl.where(moved, newton_threshold(total, tl.maximum(n, 1), CT), tau)
    return tau, tl.where(moved, n, count), moved


@triton.jit
def michelot(y, tau, live, CT: tl.constexpr):
    """Michelot's fixed point on a block of rows of gaps held on chip (``-inf`` in unused
    slots), from the lower bound ``tau``, for the ``live`` rows: ``(τ, support size)``,
    exact once no support shrinks (at most K + 1 steps, typically 3 to 8)."""
    count = tl.full(tau.shape, _MANY, tl.int32)
    moving = tl.max(live.to(tl.int32), axis=0) > 0
    while moving:
        chosen = y > tau[:, None]
        total = tl.sum(tl.where(chosen, y.to(tl.float64), 0.0), axis=1)
        n = tl.sum(chosen.to(tl.int32), axis=1)
        tau, count, moved = michelot_step(tau, count, total, n, live, CT)
        moving = tl.max(moved.to(tl.int32), axis=0) > 0
    return tau, count


@triton.jit
def cone_alpha(total, unit, kept, q, MIRROR: tl.constexpr):
    """Sparsecone's ``α = (1 + Kq)/(Σz + Kq)`` (NaN where the denominator is ≤ 0) or, with
    ``MIRROR``, sparsehourglass's ``α̂`` with ``|Σz|``, in float64, from ``Σz = unit ·
    total``: :func:`sparsegen._projection.cone_scale`, term for term; 1 for a row
    that keeps no entry (``kept == 0``), and for ``q = ∞`` (sparsemax)."""
    kq = kept.to(tl.float64) * q
    if MIRROR:
        s = tl.abs(total)
    else:
        s = total
    big = kq > 1e300
    inverse = 1.0 / tl.where(big, kq, 1.0)
    numerator = tl.where(big, 1.0 + inverse, (1.0 + kq) / unit)
    denominator = tl.where(big, s * (unit * inverse) + 1.0, s + kq / unit)
    infinite = tl.abs(kq) == float("inf")
    alpha = tl.where(infinite, 1.0, numerator / denominator)
    if not MIRROR:
        alpha = tl.where((denominator > 0) | infinite, alpha, float("nan"))
    return tl.where(kept == 0, 1.0, alpha)


@triton.jit
def cone_factor(total, kept, q, MIRROR: tl.constexpr):
    """``∂α/∂z_i ÷ α²`` of a row, the same at each kept entry: ``−1/(1 + Kq)``, times the
    sign of ``Σz`` with ``MIRROR`` (0 for a zero or NaN sum, as torch's ``sign``), in
    float64: :meth:`sparsegen._projection.ConeScale.factor`, which the backward takes; 0
    for a NaN q (a tensor q out of range: its row is NaN, and passes no gradient)."""
    factor = -1.0 / (1.0 + kept.to(tl.float64) * q)
    if MIRROR:
        factor = factor * tl.where(total > 0, 1.0, tl.where(total < 0, -1.0, 0.0))
    return tl.where(factor == factor, factor, 0.0)


@triton.jit
def cone_q_slope(total, unit, kept, q, MIRROR: tl.constexpr):
    """``∂ log α/∂q = K/(1 + Kq) − K/(S + Kq)`` of a row (``S = Σz``, or ``|Σz|`` with
    ``MIRROR``), as ``K/(1 + Kq) · (S − 1)/(S + Kq)``: two factors that stay in range
    whatever Kq, in float64 from ``Σz = unit · total`` as :func:`cone_alpha` takes it. A
    learnt q's gradient is the backward's moment ``α Σ_S u_j z_j`` times this. 0 where
    ``α`` is not finite (the limit, or outside the domain: no gradient through it), for a
    row that keeps nothing, and where ``Kq`` overflows (``α = 1``)."""
    k = kept.to(tl.float64)
    kq = k * q
    if MIRROR:
        s = tl.abs(total)
    else:
        s = total
    slope = k / (1.0 + kq) * ((s - 1.0 / unit) / (s + kq / unit))
    alpha = cone_alpha(total, unit, kept, q, MIRROR)
    defined = (tl.abs(alpha) < float("inf")) & (slope == slope) & (kept > 0)
    return tl.where(defined, slope, 0.0)


@triton.jit
def number_of_bits(bits, like):
    """The float64 number whose bits the integer ``bits`` holds, broadcast like ``like``: a
    Python float passed as its bits (:func:`sparsegen._triton_projection.float_bits`),
    since Triton takes a float argument as float32 and a tensor for it is a launch more."""
    return tl.zeros_like(like).to(tl.float64) + bits.to(tl.int64).to(tl.float64, bitcast=True)


@triton.jit
def expm1(x):
    """``e^x − 1`` to a few ulps also near 0, where a support under a large scale lies
    (Kahan's ``(u − 1) x / log u``, ``u = e^x`` rounded); ``-1`` at ``-inf``, ``inf`` where
    ``e^x`` overflows, NaN at NaN. Below −40, ``e^x − 1`` is −1 in float32 and float64
    alike: ``x`` is held there, so that ``u`` is never subnormal, whose log is far off
    (Kahan's form would give −1.006 at −100 in float32)."""
    x = tl.where(x < -40.0, -40.0, x)  # (a where, not a maximum: NaN stays NaN)
    u = tl.exp(x)
    edge = (u == 1.0) | (u == float("inf"))
    kahan = (u - 1.0) * x / tl.log(tl.where(edge, 2.0, u))
    return tl.where(u == 1.0, x, tl.where(u == float("inf"), u, kahan))


@triton.jit
def gap_key(raw, keep, CT: tl.constexpr, ABSOLUTE: tl.constexpr):
    """What ``top`` is the maximum of: the kept scores (-inf elsewhere), or their
    magnitudes (0 elsewhere)."""
    if ABSOLUTE:
        return tl.where(keep, tl.abs(raw.to(CT)), 0.0)
    return tl.where(keep, raw.to(CT), -float("inf"))


@triton.jit
def usable_top(m, ABSOLUTE: tl.constexpr):
    """The row's maximum as the transform's reference: 0 (exp) or 1 (magnitudes) where it
    is not a finite (positive) number, NaN included."""
    if ABSOLUTE:
        return tl.where((m > 0) & (m < float("inf")), m, 1.0)
    return tl.where((m > -float("inf")) & (m < float("inf")), m, 0.0)


@triton.jit
def gap_transform(raw, keep, top, CT: tl.constexpr, KIND: tl.constexpr):
    """The transformed scores below ``top`` (``KIND`` an index of
    :data:`sparsegen._projection.TRANSFORMS`; rules in :mod:`sparsegen._triton_transform`;
    for the ratio, ``top`` is its divisor, a power of two); masked entries take the
    maximum's identity (-inf, 0), whose transform is the fill the rules ask for."""
    if KIND == 0:
        kept = tl.where(keep, raw.to(CT), -float("inf"))
        return _overflow_to_limit(expm1(kept - top), kept)
    kept = tl.where(keep, raw.to(CT), 0.0)
    if KIND == 1:
        # |z| − top is exact near the top, where the support is: the factored form keeps
        # the gap's relative precision there, the squared ratio minus 1 would not
        # (divided as the CPU divides: compiled, float32's / is approximate)
        magnitude = tl.abs(kept)
        return _overflow_to_limit(square_gap(magnitude, top, top), magnitude)
    return divide(kept, top)


@triton.jit
def transform_derivative(saved, g, top, keep, KIND: tl.constexpr):
    """``∂L/∂z`` from ``g = ∂L/∂gap`` for ``KIND`` 0 (``"exp_gap"``: ``saved`` the gaps,
    ``g (gap + 1)``, that is ``g e^{z−top}``) or 1 (``"square_gap"``: ``saved`` the scores,
    ``g · 2(z/top)/top`` in that order, since ``2z``, ``top²`` or ``1/top`` may overflow,
    divided as the CPU divides); 0 at an infinite gap or score beside a finite ``g`` (its
    slice is the limit, a constant) and, for the square, where ``keep`` is False (a masked
    gap is −1, whose slope is 0 already): :mod:`sparsegen._transform_kernels`' backward."""
    beside_finite = tl.abs(g) < float("inf")
    if KIND == 0:
        grad = g * (saved + 1.0)
        dropped = (saved == float("inf")) & beside_finite
    else:
        grad = divide(g * (2.0 * divide(saved, top)), top)
        dropped = ((tl.abs(saved) == float("inf")) & beside_finite) | ~keep
    return tl.where(dropped, 0.0, grad)


@triton.jit
def square_gap(magnitude, top, unit):
    """Sparsegen-sq's gap ``(z² − M²)/u²`` as ``((|z| − M)/u)(|z|/u + 1)``, ``u`` the
    usable top (:func:`usable_top`, ``M`` itself where it is a finite positive number)."""
    return divide(magnitude - top, unit) * (divide(magnitude, unit) + 1.0)


@triton.jit
def power_of_two_at_most(top):
    """The largest power of two at most ``top`` (positive, finite), from its float64
    exponent bits (a float64 subnormal's once scaled by 2^54, exactly, to a normal number):
    scores divided by it keep their digits, as
    :func:`sparsegen._transform_kernels._power_of_two_at_most` says why."""
    wide = top.to(tl.float64)
    tiny = wide < 2.0**-1000
    normal = tl.where(tiny, wide * 2.0**54, wide)
    unit = (normal.to(tl.int64, bitcast=True) & 0x7FF0000000000000).to(tl.float64, bitcast=True)
    return tl.where(tiny, unit * 2.0**-54, unit).to(top.dtype)


@triton.jit
def _overflow_to_limit(gap, kept):
    """A finite score's gap that overflows (only under a row top of +inf, taken as 0 or 1)
    as −1, its limit under an infinite top: beside the +inf entries any finite gap gets
    0, an overflowed one would share their mass."""
    return tl.where((gap == float("inf")) & (kept < float("inf")), -1.0, gap)
