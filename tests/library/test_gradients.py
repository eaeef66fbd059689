"""Backward passes: gradcheck on every mapping and parameter, Jacobian helpers, modules."""

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import HAVE_TRITON, saved_bytes
from torch.autograd import gradcheck

import sparsegen as sg
from sparsegen import nn as snn
from sparsegen.jacobian import sparsegen_jacobian, sparsehourglass_jacobian, sparsemax_jacobian


def scores(shape=(3, 6), positive=False):
    x = torch.rand(shape, dtype=torch.float64) + 0.2 if positive else torch.randn(shape).double()
    return x.requires_grad_()


def _gradcheck(f, inputs, algorithm):
    """``gradcheck``; in Triton's interpreter, where a launch costs milliseconds, by its fast
    mode: one random projection ``vᵀJu`` of the Jacobian against finite differences (two
    calls of ``f``, not two an entry). Its tolerance scales ``atol`` by ``Σu·Σv``, loose
    for these Jacobians (their rows sum to 0, so ``vᵀJu`` is small), hence tighter ones: in
    float64 the difference quotients of these piecewise-smooth maps are accurate to about
    1e-10, and a gradient 0.1% off fails, which the default element-wise check passes."""
    if algorithm != "triton":
        return gradcheck(f, inputs)
    return gradcheck(f, inputs, fast_mode=True, atol=1e-8, rtol=1e-6)


INPUT_GRADIENTS = {
    "softmax": (sg.softmax, False),
    "sparsemax": (sg.sparsemax, False),
    "sparsegen_lin": (lambda x, **kw: sg.sparsegen_lin(x, lam=0.6, **kw), False),
    "sparsegen_exp": (lambda x, **kw: sg.sparsegen_exp(x, lam=0.3, **kw), False),
    "sparsegen_sq": (lambda x, **kw: sg.sparsegen_sq(x, lam=-0.5, **kw), False),
    "sparsegen_tanh": (lambda x, **kw: sg.sparsegen(x, torch.tanh, lam=0.5, **kw), False),
    "sparsecone": (lambda x, **kw: sg.sparsecone(x, q=2.0, **kw), True),
    "sparsehourglass": (lambda x, **kw: sg.sparsehourglass(x, q=0.5, **kw), False),
    "sum_normalization_pp": (sg.sum_normalization_pp, False),
    "spherical_softmax": (sg.spherical_softmax, False),
    "sum_normalization": (sg.sum_normalization, True),
}


@pytest.mark.parametrize("name", list(INPUT_GRADIENTS))
def test_gradcheck_wrt_input(name, algorithm):
    f, positive = INPUT_GRADIENTS[name]
    x = scores(positive=positive)
    kwargs = (
        {"algorithm": algorithm}
        if name not in {"softmax", "spherical_softmax", "sum_normalization"}
        else {}
    )
    assert _gradcheck(lambda z: f(z, **kwargs), (x,), algorithm)


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_gradcheck_on_3d_input_along_each_dim(dim, algorithm):
    x = scores((3, 4, 5))
    assert _gradcheck(lambda z: sg.sparsemax(z, dim=dim, algorithm=algorithm), (x,), algorithm)
    assert _gradcheck(
        lambda z: sg.sparsehourglass(z, q=0.7, dim=dim, algorithm=algorithm), (x,), algorithm
    )


def test_gradcheck_4d_with_mask():
    x = scores((2, 3, 4, 5))
    mask = torch.rand(2, 1, 4, 5) > 0.3
    assert gradcheck(lambda z: sg.sparsemax(z, dim=2, mask=mask), (x,))


@pytest.mark.parametrize(
    "f",
    [sg.sparsegen_lin, sg.sparsegen_exp, sg.sparsegen_sq],
    ids=["lin", "exp", "sq"],
)
def test_gradcheck_wrt_lam(f, algorithm):
    x = scores()
    lam = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert _gradcheck(lambda z, lam: f(z, lam=lam, algorithm=algorithm), (x, lam), algorithm)
    per_slice = torch.tensor([[0.1], [-0.4], [0.7]], dtype=torch.float64, requires_grad=True)
    assert _gradcheck(lambda z, lam: f(z, lam=lam, algorithm=algorithm), (x, per_slice), algorithm)
    # Masked entries become -inf inside; the gradient of lam must not see 0 · -inf.
    mask = torch.tensor([[True] * 5 + [False]] * 3)
    assert _gradcheck(
        lambda z, lam: f(z, lam=lam, mask=mask, algorithm=algorithm), (x, per_slice), algorithm
    )


@pytest.mark.parametrize("f", [sg.sparsecone, sg.sparsehourglass], ids=["cone", "hourglass"])
def test_gradcheck_wrt_q(f, algorithm):
    x = scores(positive=True)
    q = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    assert _gradcheck(lambda z, q: f(z, q=q, algorithm=algorithm), (x, q), algorithm)
    per_slice = torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64, requires_grad=True)
    assert _gradcheck(
        lambda z, q: f(z, q=q, dim=0, algorithm=algorithm), (x.t(), per_slice), algorithm
    )


def test_backward_formula_is_support_centred():
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    v = torch.randn(4, 7, dtype=torch.float64)
    p = sg.sparsemax(x)
    (grad,) = torch.autograd.grad(p, x, v)
    s = (p > 0).double()
    expected = s * (v - (s * v).sum(-1, keepdim=True) / s.sum(-1, keepdim=True))
    torch.testing.assert_close(grad, expected)


def test_backward_of_special_rows_is_finite_where_defined():
    x = torch.tensor([[-math.inf] * 3, [-math.inf, 1.0, 2.0]], requires_grad=True)
    sg.sparsemax(x).sum().backward()
    assert torch.equal(x.grad, torch.zeros(2, 3))


def test_float32_backward_matches_float64():
    x = torch.randn(5, 300)
    v = torch.randn(5, 300)
    grads = []
    for dtype in (torch.float32, torch.float64):
        z = x.to(dtype).requires_grad_()
        (g,) = torch.autograd.grad(sg.sparsegen_lin(z, lam=0.5), z, v.to(dtype))
        grads.append(g.double())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=0)


def _sparsemax_by_sort(x: torch.Tensor) -> torch.Tensor:
    """Sparsemax along the last axis in plain torch ops (sort, cumulative sums): autograd
    differentiates it without the library's backward. Masked entries come as -inf."""
    top, _ = x.sort(-1, descending=True)
    finite = torch.where(torch.isfinite(top), top, 0.0)
    ranks = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype)
    sizes = ((1 + ranks * top > finite.cumsum(-1)) & torch.isfinite(top)).sum(-1, keepdim=True)
    tau = (finite.cumsum(-1).gather(-1, sizes - 1) - 1) / sizes
    return torch.clamp(x - tau, min=0)


def _scale_reference(name: str, z: torch.Tensor, theta: torch.Tensor, keep: torch.Tensor):
    k = keep.sum(-1, keepdim=True)
    total = torch.where(keep, z, 0.0).sum(-1, keepdim=True)
    if name == "sparsegen_lin":
        return 1 / (1 - theta)
    if name == "sparsecone":
        return (1 + k * theta) / (total + k * theta)
    return (1 + k * theta) / (total.abs() + k * theta)  # sparsehourglass


# One kernel call gives the scaled mappings' backward (c·u and each slice's moment): short
# rows, and long rows whose small support the kernel reads by position.
@pytest.mark.parametrize(
    ("algorithm", "k"),
    [("compiled", 37), ("compiled", 4096), *([("triton", 37)] if HAVE_TRITON else [])],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("learnt", [True, False])
@pytest.mark.parametrize("name", ["sparsegen_lin", "sparsecone", "sparsehourglass"])
def test_scaled_gradients_equal_a_float64_reference_differentiated_by_torch(
    name, learnt, masked, dtype, k, algorithm
):
    # (a number q: the cone's scale computed in the kernel, its sign and count kept)
    generator = torch.Generator().manual_seed(k)
    z64 = torch.randn(6, k, dtype=torch.float64, generator=generator)
    if name == "sparsecone":
        z64 = z64.abs() + 0.1  # (its domain: Σz + Kq > 0)
    theta64 = torch.tensor([[0.3], [-2.0], [0.5], [0.9], [-0.4], [0.1]], dtype=torch.float64)
    if name != "sparsegen_lin":
        theta64 = theta64.abs() + 0.05
    keep = torch.rand(6, k, generator=generator) > 0.2 if masked else torch.ones(6, k, dtype=bool)
    g64 = torch.randn(6, k, dtype=torch.float64, generator=generator)

    if not learnt:
        theta64 = torch.full_like(theta64, 0.7)
    z, theta = z64.to(dtype).requires_grad_(), theta64.to(dtype).requires_grad_(learnt)
    given = theta if learnt else 0.7
    parameter = {"lam": given} if name == "sparsegen_lin" else {"q": given}
    out = getattr(sg, name)(z, **parameter, mask=keep if masked else None, algorithm=algorithm)
    inputs = (z, theta) if learnt else (z,)
    grad_z, *grad_theta = torch.autograd.grad(out, inputs, g64.to(dtype))

    z_ref, theta_ref = z64.clone().requires_grad_(), theta64.clone().requires_grad_()
    scaled = _scale_reference(name, z_ref, theta_ref, keep) * z_ref
    expected = _sparsemax_by_sort(scaled.masked_fill(~keep, -math.inf))
    expected_z, expected_theta = torch.autograd.grad(expected, (z_ref, theta_ref), g64)
    assert (out.detach().double() > 0).equal(expected.detach() > 0)
    tolerance = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(grad_z.double(), expected_z, **tolerance)
    if learnt:
        torch.testing.assert_close(grad_theta[0].double(), expected_theta, **tolerance)


_LAM = torch.full((64, 1), 0.3, requires_grad=True)
_Q = torch.full((64, 1), 0.7, requires_grad=True)
KEEP_NO_SCORES = {
    "sparsemax": lambda z, **kw: sg.sparsemax(z, **kw),
    "sparsegen_lin": lambda z, **kw: sg.sparsegen_lin(z, lam=0.3, **kw),
    "sparsegen_lin, learnt λ": lambda z, **kw: sg.sparsegen_lin(z, lam=_LAM, **kw),
    "sparsecone": lambda z, **kw: sg.sparsecone(z, q=0.7, **kw),
    "sparsecone, learnt q": lambda z, **kw: sg.sparsecone(z, q=_Q, **kw),
    "sparsehourglass": lambda z, **kw: sg.sparsehourglass(z, q=0.7, **kw),
    "sparsehourglass, learnt q": lambda z, **kw: sg.sparsehourglass(z, q=_Q, **kw),
    "sum_normalization_pp": lambda z, **kw: sg.sum_normalization_pp(z, **kw),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("name", list(KEEP_NO_SCORES))
def test_autograd_keeps_the_output_not_the_scores(name, masked, dtype, algorithm):
    # The output, one support size per slice and per-slice values (the scale, its sum's
    # sign); the scores' derivatives are read off the output, c·z − τ on the support
    z = (torch.randn(64, 300, dtype=dtype) + 0.5).requires_grad_()
    mask = torch.rand(64, 300) > 0.2 if masked else None
    output = z.numel() * z.element_size()
    kept = saved_bytes(lambda x: KEEP_NO_SCORES[name](x, mask=mask, algorithm=algorithm), z)
    masks = 0 if mask is None else 2 * mask.numel()  # (torch.where keeps its condition)
    per_slice = 64 * 8 * 32  # a few dozen float64 values a slice, of the scale's formula
    assert output <= kept <= output + masks + per_slice


# ---- explicit Jacobians (Eq. 3) against autograd ----


def autograd_jacobian(f, x):
    return torch.autograd.functional.jacobian(f, x)


def test_sparsemax_jacobian_matches_autograd_and_formula():
    x = torch.randn(4, 6, dtype=torch.float64)
    jac = sparsemax_jacobian(x)
    for i in range(4):
        torch.testing.assert_close(jac[i], autograd_jacobian(sg.sparsemax, x[i]))
    s = (sg.sparsemax(x[0]) > 0).double()
    torch.testing.assert_close(jac[0], torch.diag(s) - torch.outer(s, s) / s.sum())
    assert sparsemax_jacobian(x.t(), dim=0).shape == (4, 6, 6)


@pytest.mark.parametrize(
    ("g", "f"),
    [
        (torch.exp, sg.sparsegen_exp),
        (torch.square, sg.sparsegen_sq),
        (lambda z: z, sg.sparsegen_lin),
    ],
    ids=["exp", "sq", "lin"],
)
def test_sparsegen_jacobian_eq3(g, f):
    x = torch.randn(3, 5, dtype=torch.float64)
    jac = sparsegen_jacobian(x, g, lam=0.4)
    for i in range(3):
        torch.testing.assert_close(jac[i], autograd_jacobian(lambda z: f(z, lam=0.4), x[i]))


def test_sparsehourglass_jacobian():
    x = torch.randn(3, 5, dtype=torch.float64)
    jac = sparsehourglass_jacobian(x, q=0.3)
    for i in range(3):
        expected = autograd_jacobian(lambda z: sg.sparsehourglass(z, q=0.3), x[i])
        torch.testing.assert_close(jac[i], expected)


def test_jacobians_at_the_mappings_limits_and_special_slices():
    # each Jacobian is the derivative of what the mapping returns there: autograd's
    z = torch.tensor(
        [[1.0, 0.8, -0.5], [1.0, -1.0, 0.0], [math.nan, 1.0, 2.0]], dtype=torch.float64
    )
    at_inf = sparsehourglass_jacobian(z[:2], q=math.inf)  # sparsehourglass at q = inf: sparsemax
    torch.testing.assert_close(at_inf, sparsemax_jacobian(z[:2]))
    at_zero = sparsehourglass_jacobian(z[:2], q=0.0)  # row 1 sums to 0: the limit, no slope
    for i in range(2):
        expected = autograd_jacobian(lambda v: sg.sparsehourglass(v, q=0.0), z[i])
        torch.testing.assert_close(at_zero[i], expected)
    assert torch.equal(at_zero[1], torch.zeros(3, 3, dtype=torch.float64))
    for jacobian in (sparsemax_jacobian(z), sparsehourglass_jacobian(z, q=0.5)):
        assert jacobian[2].isnan().all() and not jacobian[:2].isnan().any()  # NaN in, NaN out
    as_numpy = sparsemax_jacobian(z[:2].numpy())  # NumPy in, NumPy out, as the mappings
    np.testing.assert_array_equal(as_numpy, sparsemax_jacobian(z[:2]).numpy())


# ---- modules ----


def test_modules_match_functions():
    x = torch.randn(3, 5)
    pairs = [
        (snn.Sparsemax(dim=0), sg.sparsemax(x, dim=0)),
        (snn.Softmax(), sg.softmax(x)),
        (snn.Hardmax(), sg.hardmax(x)),
        (snn.SparsegenLin(0.5), sg.sparsegen_lin(x, lam=0.5)),
        (snn.SparsegenExp(0.5), sg.sparsegen_exp(x, lam=0.5)),
        (snn.SparsegenSq(0.5), sg.sparsegen_sq(x, lam=0.5)),
        (snn.Sparsecone(4.0), sg.sparsecone(x, q=4.0)),
        (snn.Sparsehourglass(0.5), sg.sparsehourglass(x, q=0.5)),
        (snn.SumNormalizationPP(), sg.sum_normalization_pp(x)),
        (snn.SphericalSoftmax(), sg.spherical_softmax(x)),
    ]
    for module, expected in pairs:
        torch.testing.assert_close(module(x), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(snn.SumNormalization()(x.abs()), sg.sum_normalization(x.abs()))
    mask = torch.tensor([True, True, False, True, True])
    torch.testing.assert_close(snn.Sparsemax()(x, mask), sg.sparsemax(x, mask=mask))


def test_learnable_parameters_train_and_stay_valid():
    torch.manual_seed(0)
    x = torch.randn(32, 6)
    target = sg.sparsegen_lin(x, lam=0.8)  # sparser than the starting point
    module = snn.SparsegenLin(0.0, learnable=True)
    assert [name for name, _ in module.named_parameters()] == ["log_one_minus_lam"]
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    for _ in range(200):
        optimizer.zero_grad()
        loss = ((module(x) - target) ** 2).sum()
        loss.backward()
        optimizer.step()
    assert abs(module.lam.item() - 0.8) < 0.02
    assert module.lam.item() < 1

    hourglass = snn.Sparsehourglass(1.0, learnable=True)
    target = sg.sparsehourglass(x, q=0.1)
    optimizer = torch.optim.Adam(hourglass.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        ((hourglass(x) - target) ** 2).sum().backward()
        optimizer.step()
    assert abs(hourglass.q.item() - 0.1) < 0.02


def test_a_learnt_lam_never_reaches_one():
    # λ = 1 − exp(ρ) rounded to 1 in float32 once ρ ≤ −17 (a few large steps), and the next
    # forward raised "lam must be < 1"; in float16 λ = 0.9998 did at once, and bfloat16
    # computed 0.998 as 0.996
    x = torch.randn(8, 10)
    module = snn.SparsegenLin(0.5, learnable=True)
    with torch.no_grad():
        module.log_one_minus_lam.fill_(-40.0)
    assert module.lam.item() < 1 and torch.isfinite(module(x)).all()
    # held at the floor, the gradient still reaches ρ (scores 1 ulp apart keep a support of
    # two at the largest scale), so a loss that wants a smaller λ brings it back
    near = torch.tensor([1.0, torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)), 0.0])
    (module(near) * torch.tensor([1.0, -1.0, 0.0])).sum().backward()
    assert module.log_one_minus_lam.grad.item() != 0
    for dtype, lam in ((torch.float16, 0.9998), (torch.bfloat16, 0.998)):
        per_slice = snn.SparsegenLin(torch.tensor([lam])).to(dtype)  # a buffer .to() casts
        assert per_slice.lam.dtype == torch.float32 and abs(per_slice.lam.item() - lam) < 2e-5
        assert per_slice(x.to(dtype)).dtype == dtype
        assert snn.SparsegenLin(lam).to(dtype).lam == lam  # a number stays one


@pytest.mark.parametrize("f", [sg.sparsegen_lin, sg.sparsegen_exp, sg.sparsegen_sq])
def test_a_float64_lam_that_rounds_to_one_for_float32_scores_keeps_finite_gradients(f):
    # cast to float32, λ = 1 − 1e-9 became 1: 1/(1 − λ) = inf, ±inf score gradients and a
    # NaN λ gradient; it is held at float32's largest value below 1 instead
    lam = torch.tensor(1 - 1e-9, dtype=torch.float64, requires_grad=True)
    x = torch.tensor([[0.3, 0.3, -0.1], [0.2, -0.5, 0.1]], requires_grad=True)
    out = f(x, lam=lam)
    (out * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.isfinite().all() and lam.grad.isfinite()
    below_one = 1 - torch.finfo(torch.float32).eps / 2
    torch.testing.assert_close(out, f(x.detach(), lam=below_one))
    module = snn.SparsegenLin(0.5, learnable=True).double()
    with torch.no_grad():
        module.log_one_minus_lam.fill_(-20.0)  # λ = 1 − 2e-9, valid in float64
    (module(x.detach()) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert module.log_one_minus_lam.grad.isfinite()


def test_a_module_computes_lam_in_its_inputs_dtype():
    # λ = 1 − 1e-9 held as a float32 log(1 − λ) was computed in float32 (1 − 1.2e-7 at the
    # floor) and gave a float64 input another output than the function
    lam = torch.tensor([[1 - 1e-9]], dtype=torch.float64)
    x = torch.tensor([[0.0, -1e-8, -1.0]], dtype=torch.float64)
    expected = sg.sparsegen_lin(x, lam=lam)
    assert torch.equal(expected, torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(snn.SparsegenLin(lam=lam)(x), expected)
    learnt = snn.SparsegenLin(lam=1 - 1e-9, learnable=True)  # ρ in float32
    torch.testing.assert_close(learnt(x), expected)
    assert learnt.lam.dtype == torch.float32  # (the property: the parameter's own dtype)


def test_a_learnt_q_never_reaches_zero_and_lam_starts_finite():
    # exp(θ) underflowed to 0 for θ ≤ −104: sparsecone's domain shrank to Σz > 0 (NaN)
    cone = snn.Sparsecone(1.0, learnable=True)
    with torch.no_grad():
        cone.log_q.fill_(-104.0)
    assert cone.q.item() == pytest.approx(torch.finfo(torch.float32).tiny, rel=1e-5)
    x = torch.tensor([[0.3, -0.3, 0.2, -0.2, 0.0]])
    assert torch.equal(cone(x), torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]]))
    (cone(x) * torch.arange(5.0)).sum().backward()
    assert cone.log_q.grad.isfinite()
    with torch.no_grad():
        cone.log_q.fill_(-math.inf)  # (held, not inf − inf = NaN)
    assert cone.q.item() == pytest.approx(torch.finfo(torch.float32).tiny, rel=1e-5)
    # a learnable λ of −inf was accepted and became NaN; a fixed one is the uniform limit
    with pytest.raises(ValueError, match="learnable lam must start finite"):
        snn.SparsegenLin(-math.inf, learnable=True)
    uniform = torch.full((1, 3), 1 / 3)
    for fixed in (-math.inf, torch.tensor([[-math.inf]])):
        torch.testing.assert_close(
            snn.SparsegenLin(fixed)(torch.tensor([[1.0, 2.0, 3.0]])), uniform
        )


def test_a_fixed_per_slice_q_moves_with_the_module():
    q = torch.tensor([[0.5], [2.0]])
    module = snn.Sparsehourglass(q).double()
    assert module.q.dtype == torch.float64 and module.state_dict() == {}  # (a hyperparameter)
    x = torch.randn(2, 5, dtype=torch.float64)
    torch.testing.assert_close(module(x), sg.sparsehourglass(x, q=q.double()))
    # in a half type it keeps float32, as λ does: q = 1e5 rounded to inf in float16
    q = torch.tensor([[1e5], [0.3]])
    half = snn.Sparsehourglass(q).half()
    assert half.q.dtype == torch.float32
    assert torch.equal(half(x.half()), sg.sparsehourglass(x.half(), q=q))
    learnt = snn.Sparsehourglass(1e5, learnable=True).half()  # so is a learnable q (θ in half)
    assert learnt.q.dtype == torch.float32 and learnt.q.item() == pytest.approx(1e5, rel=1e-2)
    assert torch.isfinite(learnt(x.half())).all()


def test_module_parameter_errors_and_repr():
    with pytest.raises(ValueError, match="lam must be < 1"):
        snn.SparsegenLin(1.0)
    with pytest.raises(ValueError, match="q must be >= 0"):
        snn.Sparsehourglass(-1.0)
    with pytest.raises(ValueError, match="learnable q must start"):
        snn.Sparsehourglass(0.0, learnable=True)
    assert "lam=0.5" in repr(snn.SparsegenLin(0.5))
    assert "q=2" in repr(snn.Sparsehourglass(2.0, learnable=True))
    with pytest.raises(TypeError, match="Sparsemax: dim must be an int; got str"):
        snn.Sparsemax(dim="a")  # when built (it failed at the first forward)
    with pytest.raises(TypeError, match="SparsegenLin: dim must be an int; got NoneType"):
        snn.SparsegenLin(0.5, dim=None)
    with pytest.raises(AttributeError, match=r"SparsegenLin\.lam is read-only: build a new"):
        snn.SparsegenLin(0.5).lam = 0.7
    with pytest.raises(AttributeError, match="write a learnable one's log_q under"):
        snn.Sparsehourglass(2.0, learnable=True).q = 1.0
    # an array of values per slice, as the functions take it (a list already was)
    per_row = np.array([[0.1], [0.5]])
    x = torch.randn(2, 5, dtype=torch.float64)
    expected = sg.sparsegen_lin(x, lam=torch.from_numpy(per_row))
    torch.testing.assert_close(snn.SparsegenLin(per_row)(x), expected)


@pytest.mark.parametrize("module", [snn.SparsegenLin, snn.SparsegenSq, snn.Sparsehourglass])
def test_a_positional_int_parameter_is_named_as_not_a_dim(module):
    # SparsegenLin(0) is λ = 0 on the last dim, Sparsehourglass(1) q = 1: a reader of
    # torch's nn.Softmax(1) expects the dimension, and got another parameter, silently
    parameter = module.parameter
    with pytest.warns(UserWarning, match=rf"sets {parameter}=0, not dim=0 .*\({parameter}=0\)"):
        made = module(0)
    assert getattr(made, parameter) == 0 and made.dim == -1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module(0.5), module(**{parameter: 0}), module(dim=0), module(0.5, 0), module(0, dim=1)


def test_a_fixed_lam_is_an_exact_hyperparameter_like_q():
    # Held as a float32 log(1 − λ), a fixed λ = 0.5 computed as 0.5000000009 in float64,
    # and as state it kept a sparse MultiheadAttention's state dict from loading into torch's.
    x = torch.randn(4, 6, dtype=torch.float64)
    assert torch.equal(snn.SparsegenLin(0.5).double()(x), sg.sparsegen_lin(x, lam=0.5))
    assert snn.SparsegenSq(0.5).lam == 0.5
    assert snn.SparsegenLin(0.5).state_dict() == {}
    assert snn.SparsegenExp(torch.tensor([[0.5], [0.1]])).state_dict() == {}
    ours = snn.MultiheadAttention(8, 2, mapping="sparsegen_lin", lam=0.5, per_head=True)
    torch.nn.MultiheadAttention(8, 2).load_state_dict(ours.state_dict())
    # State dicts that held it (as log(1 − λ)) still load, and set it, silently where
    # it is the module's own λ.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = snn.SparsegenLin(0.25)
        same.load_state_dict({"log_one_minus_lam": torch.tensor(math.log(0.75))})
    restored = snn.SparsegenLin(0.0)
    with pytest.warns(UserWarning, match="saved λ 0.25 replaces the fixed λ 0 of this Sparse"):
        restored.load_state_dict({"log_one_minus_lam": torch.tensor(math.log(0.75))})
    assert restored.lam == pytest.approx(0.25)
    per_slice = snn.SparsegenLin(torch.zeros(2, 1))
    with pytest.warns(UserWarning, match="the saved λ tensor of shape"):
        per_slice.load_state_dict({"log_one_minus_lam": torch.tensor([[math.log(0.75)], [0.0]])})
    torch.testing.assert_close(per_slice.lam, torch.tensor([[0.25], [0.0]]))


@pytest.mark.parametrize(
    "fixed, learnt, read",
    [
        (snn.SparsegenLin(0.7), snn.SparsegenLin(0.3, learnable=True), "lam"),
        (snn.Sparsehourglass(q=2.0), snn.Sparsehourglass(q=0.5, learnable=True), "q"),
        (snn.Sparsecone(q=torch.ones(2, 1)), snn.Sparsecone(q=[[0.5], [3.0]], learnable=True), "q"),
    ],
    ids=["lam", "q", "per-slice q"],
)
def test_a_learnt_value_loaded_into_a_fixed_module_sets_it_with_a_warning(fixed, learnt, read):
    # One rule for λ and q: a fixed λ took a learnable module's λ silently, while a fixed
    # q refused it (an unexpected key)
    with pytest.warns(UserWarning, match="replaces the fixed"):
        fixed.load_state_dict(learnt.state_dict())
    torch.testing.assert_close(
        torch.as_tensor(getattr(fixed, read), dtype=torch.float64),
        getattr(learnt, read).detach().double(),
    )
    assert not fixed.learnable and fixed.state_dict() == {}
    x = torch.randn(2, 5)
    torch.testing.assert_close(fixed(x), learnt(x).detach())
    state = {name: value.fill_(math.nan) for name, value in learnt.state_dict().items()}
    with pytest.raises(ValueError, match="the saved value is NaN"):
        fixed.load_state_dict(state)


@pytest.mark.parametrize("f", [sg.sparsecone, sg.sparsehourglass])
def test_a_fully_masked_slice_gives_q_no_nan_gradient(f):
    # The scale of a slice that keeps nothing is 1 whatever q is: its gradient is 0, and
    # the other slices' gradients are those computed without it.
    x = torch.rand(2, 4, dtype=torch.float64) + 0.1
    log_q = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64)
    mask = torch.tensor([[True] * 4, [False] * 4])
    (with_dead,) = torch.autograd.grad((f(x, q=log_q.exp(), mask=mask) * w).sum(), log_q)
    (alone,) = torch.autograd.grad((f(x[:1], q=log_q.exp()) * w).sum(), log_q)
    assert torch.isfinite(with_dead) and with_dead != 0
    torch.testing.assert_close(with_dead, alone)


def test_fixed_per_slice_values_survive_meta_initialisation_and_every_cast():
    # not state, they are rebuilt from a float64 copy: built under the meta device, or moved
    # there, a per-head λ (or q) came back from to_empty as uninitialised memory
    with torch.device("meta"):
        lam_heads = snn.MultiheadAttention(8, 2, mapping="sparsegen_lin", lam=0.3, per_head=True)
        q_heads = snn.MultiheadAttention(8, 2, mapping="sparsehourglass", q=0.5, per_head=True)
    lam_heads.to_empty(device="cpu")
    q_heads.to_empty(device="cpu")
    torch.testing.assert_close(lam_heads.mapping.lam.flatten(), torch.tensor([0.3, 0.3]))
    torch.testing.assert_close(q_heads.mapping.q.flatten(), torch.tensor([0.5, 0.5]))
    q = torch.tensor([[0.3], [2.0]])
    moved = snn.Sparsehourglass(q).to("meta").to_empty(device="cpu")
    torch.testing.assert_close(moved.q, q)
    wide = snn.SparsegenLin(torch.tensor([[0.3], [1 - 1e-12]], dtype=torch.float64))
    assert wide.half().double().lam[0].item() == pytest.approx(0.3, abs=1e-15)
    with pytest.raises(ValueError, match=r"saved λ of shape \(2, 1\)"):
        snn.SparsegenLin(0.3).load_state_dict({"log_one_minus_lam": torch.zeros(2, 1)})


def test_a_learnable_lam_within_float32_rounding_of_one_starts_finite():
    # log(1 − λ) of λ rounded to float32 first was log(0) = −inf, and the forward raised
    module = snn.SparsegenLin(1 - 1e-8, learnable=True)
    assert torch.isfinite(module.log_one_minus_lam) and module.lam.item() < 1
    assert torch.isfinite(module(torch.randn(2, 5))).all()


@pytest.mark.parametrize("module", [snn.SparsegenLin, snn.Sparsehourglass])
def test_learnable_must_be_a_bool(module):
    # ("no" was taken, and read as True)
    for learnable in ("no", 1, None):
        with pytest.raises(TypeError, match=rf"{module.__name__}: learnable must be a bool"):
            module(0.5, learnable=learnable)
    assert module(0.5, learnable=np.True_).learnable is True


@pytest.mark.parametrize(
    "build",
    [
        lambda: snn.SparsegenLin(0.5, learnable=True),
        lambda: snn.Sparsecone(q=[[1.0], [2.0]], learnable=True),
    ],
)
def test_a_nan_learnt_parameter_is_refused_where_it_is_loaded(build):
    # (it loaded, and the next forward refused "lam"/"q" without saying where it came from)
    module = build()
    (name,) = module.state_dict()
    state = {name: module.state_dict()[name].clone()}
    state[name].fill_(math.nan)
    with pytest.raises(ValueError, match=rf"{name}: the saved value is NaN"):
        torch.nn.Sequential(module).load_state_dict({f"0.{name}": state[name]})
    before = module.state_dict()[name].clone()
    state[name].fill_(math.inf)  # a limit, which the module holds at its bound
    module.load_state_dict(state)
    assert module.state_dict()[name].isinf().all() and not before.isinf().any()
    assert torch.isfinite(module(torch.randn(2, 2))).all()
    # one that goes NaN in training is named at the next forward, as the module's parameter
    with torch.no_grad():
        getattr(module, name).fill_(math.nan)
    with pytest.raises(ValueError, match=rf"{type(module).__name__}\.{name} is NaN \(did train"):
        module(torch.randn(2, 2))


@pytest.mark.parametrize("module", [snn.SparsegenExp, snn.Sparsehourglass])
@pytest.mark.parametrize("empty", [[], torch.empty(0, 1)], ids=["list", "tensor"])
@pytest.mark.parametrize("learnable", [False, True])
def test_an_empty_parameter_is_refused_when_the_module_is_built(module, empty, learnable):
    # (it was accepted, a learnable one as a Parameter of shape (0,), and failed at forward)
    with pytest.raises(ValueError, match=rf"{module.__name__}: (lam|q) is an empty tensor"):
        module(empty, learnable=learnable)
    with pytest.raises(ValueError, match=rf"{module.__name__}: (lam|q) is a meta tensor"):
        module(torch.full((2, 1), 0.5, device="meta"), learnable=learnable)


def test_a_mask_parameter_or_target_on_another_device_is_named():
    # (meta stands in for a GPU beside CPU scores, which torch's operations refuse too: the
    # copy was made silently, or failed in torch's copy, "Cannot copy out of meta tensor")
    x = torch.randn(2, 3)
    elsewhere = {"device": "meta"}
    calls = {
        "sparsemax: the mask": lambda: sg.sparsemax(
            x, mask=torch.ones(2, 3, dtype=torch.bool, **elsewhere)
        ),
        "sparsegen_lin: lam": lambda: sg.sparsegen_lin(x, lam=torch.tensor(0.5, **elsewhere)),
        "sparsecone: q": lambda: sg.sparsecone(x, q=torch.ones(2, 1, **elsewhere)),
        "sparsemax_loss: the target": lambda: sg.losses.sparsemax_loss(
            x, torch.zeros(2, dtype=torch.long, **elsewhere)
        ),
    }
    for what, call in calls.items():
        with pytest.raises(ValueError, match=rf"{what} is on meta, the scores on cpu: put it"):
            call()
    # a CPU one beside scores elsewhere is moved there, as before
    assert sg.sparsegen_lin(x.to("meta"), lam=torch.tensor(0.5)).device.type == "meta"


@pytest.mark.parametrize("algorithm", ["compiled", "sort"])
@pytest.mark.parametrize(
    "f",
    [
        lambda z, **kw: sg.sparsehourglass(z, q=0.7, **kw),
        lambda z, **kw: sg.sparsecone(z.abs(), q=0.7, **kw),
        lambda z, **kw: sg.sum_normalization_pp(z, **kw),
    ],
    ids=["sparsehourglass", "sparsecone", "sum_normalization_pp"],
)
def test_masked_float64_gradients_equal_those_of_the_slice_without_the_masked_entries(f, algorithm):
    # the scale's gradient took the mask's int64 count times a float: float32, a 1e-9 error
    z = torch.tensor([[0.3, 1.2, -0.4, 0.9, 2.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True, True]])
    w = torch.tensor([[0.3, -1.0, 0.5, 2.0, 0.1]], dtype=torch.float64)
    masked, kept = z.clone().requires_grad_(), z[mask].reshape(1, -1).requires_grad_()
    (f(masked, mask=mask, algorithm=algorithm) * w).sum().backward()
    (f(kept, algorithm=algorithm) * w[mask]).sum().backward()
    torch.testing.assert_close(masked.grad[mask], kept.grad[0], rtol=1e-14, atol=1e-15)
    assert masked.grad[~mask].eq(0).all()


def test_a_tensor_q_too_small_for_the_scales_derivative_gives_zero_not_nan():
    # |Σz| = 1e-200 and q = 1e-300: α̂ ≈ 2.5e299 is finite but ∂α̂/∂z = −α̂²/(1 + Kq)
    # overflows; one entry takes the mass, so the output is locally constant (as a float
    # q of the same value gives), and reverse mode met 0 · inf
    z = torch.tensor([[1.0, -1.0, 0.5, -0.5 + 1e-200]], dtype=torch.float64)
    for q in (1e-300, torch.tensor([[1e-300]], dtype=torch.float64)):
        x = z.clone().requires_grad_()
        out = sg.sparsehourglass(x, q=q)
        out[0, 0].backward()
        assert out.detach().tolist() == [[1.0, 0.0, 0.0, 0.0]]
        assert x.grad.eq(0).all()
        jacobian = torch.func.jacrev(lambda t, q=q: sg.sparsehourglass(t, q=q))(z)
        assert jacobian.eq(0).all()


def test_learnable_mappings_build_on_meta_and_reset_to_their_initial_values():
    # torch's recipe for a model too large to build twice: build on meta, to_empty, then
    # reset_parameters(); a learnt λ raised ("Tensor.item() cannot be called on meta
    # tensors"), repr too, and to_empty left it as whatever memory held, with no reset
    with torch.device("meta"):
        modules = [
            snn.SparsegenLin(0.4, learnable=True),
            snn.Sparsehourglass(q=1.5, learnable=True),
            snn.SparsegenExp(lam=[0.1, 0.2], learnable=True),
        ]
    for module in modules:
        assert "meta" in str(next(module.parameters()).device) and repr(module)
        module.to_empty(device="cpu")
        with torch.no_grad():
            next(module.parameters()).fill_(math.nan)
        module.reset_parameters()
    torch.testing.assert_close(modules[0].lam, torch.tensor(0.4))
    torch.testing.assert_close(modules[1].q, torch.tensor(1.5))
    torch.testing.assert_close(modules[2].lam, torch.tensor([0.1, 0.2]))
    fixed = snn.SparsegenLin(0.4)
    fixed.reset_parameters()  # (nothing learnt: nothing to reset)
    assert fixed.lam == 0.4


@pytest.mark.parametrize(
    "module",
    [snn.Sparsehourglass(q=1.0, learnable=True), snn.SparsegenLin(0.0, learnable=True)],
    ids=["q", "lam"],
)
def test_a_learnt_parameter_driven_far_up_stays_finite_and_usable(module):
    # log q past log(float32 max) made q = inf, and every forward then refused it; λ went
    # to -inf with a NaN gradient
    with torch.no_grad():
        next(module.parameters()).fill_(200.0)
    value = module.q if hasattr(module, "log_q") else -module.lam
    assert 1e18 < float(value) < 2e19
    x = (torch.rand(4, 6) + 0.1).requires_grad_()
    module(x)[:, 0].sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(next(module.parameters()).grad).all()


def test_parametrized_mapping_parameters_are_found_and_fixed_buffers_still_convert():
    from torch.nn.utils import parametrize

    class Identity(torch.nn.Module):
        def forward(self, value):
            return value

    learnt = snn.SparsegenLin(0.5, learnable=True)
    parametrize.register_parametrization(learnt, "log_one_minus_lam", Identity())
    (found,) = snn.mapping_parameters(learnt)  # (none: it sat in a child)
    assert found is learnt.parametrizations.log_one_minus_lam.original
    fixed = snn.SparsegenLin(lam=[[0.1], [0.2], [0.3]])
    parametrize.register_parametrization(fixed, "log_one_minus_lam", Identity())
    assert fixed.double()(torch.randn(3, 5, dtype=torch.float64)).shape == (3, 5)  # KeyError
