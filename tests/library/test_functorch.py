"""torch.func and forward-mode AD: vmap, grad, jacrev, jacfwd and jvp on every mapping agree
with the explicit Jacobians of sparsegen.jacobian and with finite differences; double
backward works (the projection's second derivative is zero wherever it exists)."""

import functools

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from cases import LOSSES, MAPPINGS, scores
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap

import sparsegen as sg
from sparsegen.jacobian import sparsegen_jacobian, sparsehourglass_jacobian, sparsemax_jacobian

DIFFERENTIABLE = [name for name, (_, _, differentiable) in MAPPINGS.items() if differentiable]


def _input(name, shape=(4, 6)):
    return scores(shape, positive=MAPPINGS[name][1], dtype=torch.float64, seed=2)


@pytest.mark.parametrize("name", list(MAPPINGS))
def test_vmap_equals_the_batched_call(name):
    f = MAPPINGS[name][0]
    x = scores((3, 4, 6), positive=MAPPINGS[name][1], dtype=torch.float64)
    batched = vmap(f)(x)
    looped = torch.stack([f(row) for row in x])
    torch.testing.assert_close(batched, looped, equal_nan=True)


def test_vmap_over_another_dimension_and_over_the_parameter():
    x = scores((4, 3, 6), dtype=torch.float64)
    lam = torch.linspace(-1.0, 0.9, 3, dtype=torch.float64)
    per_lam = vmap(lambda z, lam_: sg.sparsegen_lin(z, lam=lam_), in_dims=(1, 0))(x, lam)
    for i in range(3):
        torch.testing.assert_close(per_lam[i], sg.sparsegen_lin(x[:, i], lam=lam[i].item()))
    q = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    per_q = vmap(lambda z, q: sg.sparsehourglass(z, q=q), in_dims=(1, 0), out_dims=1)(x, q)
    for i in range(3):
        torch.testing.assert_close(per_q[:, i], sg.sparsehourglass(x[:, i], q=q[i].item()))


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_jacrev_equals_jacfwd(name):
    f = MAPPINGS[name][0]
    x = _input(name)
    reverse, forward = jacrev(f)(x), jacfwd(f)(x)
    torch.testing.assert_close(forward, reverse)
    # and both equal the Jacobian autograd assembles row by row
    torch.testing.assert_close(reverse, torch.autograd.functional.jacobian(f, x))


def test_jacrev_equals_the_explicit_jacobians():
    z = scores((3, 7), dtype=torch.float64, seed=4) * 2
    for row in z:
        torch.testing.assert_close(jacrev(sg.sparsemax)(row), sparsemax_jacobian(row))
        torch.testing.assert_close(
            jacfwd(lambda v: sg.sparsegen_lin(v, lam=0.4))(row),
            sparsegen_jacobian(row, lambda v: v, lam=0.4),
        )
        torch.testing.assert_close(
            jacrev(lambda v: sg.sparsegen_sq(v, lam=-0.3))(row),
            sparsegen_jacobian(row, torch.square, lam=-0.3),
        )
        torch.testing.assert_close(
            jacfwd(lambda v: sg.sparsehourglass(v, q=0.7))(row),
            sparsehourglass_jacobian(row, q=0.7),
        )
    batched = vmap(jacrev(sg.sparsemax))(z)
    torch.testing.assert_close(batched, sparsemax_jacobian(z))


def test_grad_of_a_scalar_loss_and_of_the_parameter():
    x = scores((6,), dtype=torch.float64)
    target = torch.softmax(scores((6,), dtype=torch.float64, seed=9), -1)

    def loss(z, lam):
        return ((sg.sparsegen_lin(z, lam=lam) - target) ** 2).sum()

    lam = torch.tensor(0.3, dtype=torch.float64)
    g_z, g_lam = grad(loss, argnums=(0, 1))(x, lam)
    z_, lam_ = x.clone().requires_grad_(), lam.clone().requires_grad_()
    loss(z_, lam_).backward()
    torch.testing.assert_close(g_z, z_.grad)
    torch.testing.assert_close(g_lam, lam_.grad)


@pytest.mark.parametrize("name", list(LOSSES))
def test_per_sample_gradients_of_every_loss(name):
    # vmap of grad: each row's gradient alone, as autograd gives it for the batch's sum
    # (the sparsemax loss's old-style autograd.Function refused torch.func outright)
    x = scores((5, 6), dtype=torch.float64, seed=3)

    def one(row):
        return LOSSES[name](row[None])

    per_sample = vmap(grad(one))(x)
    leaf = x.clone().requires_grad_()
    torch.stack([one(row) for row in leaf]).sum().backward()
    torch.testing.assert_close(per_sample, leaf.grad)


@pytest.mark.parametrize("loss", [sg.losses.sparsemax_loss, sg.losses.softmax_loss])
def test_per_sample_gradients_with_class_indices_mapped_too(loss):
    # each sample's own class index under vmap (F.one_hot read the largest one back)
    z = scores((5, 6), dtype=torch.float64, seed=4)
    target = torch.tensor([0, 5, 2, 2, 1])
    per_sample = vmap(grad(lambda row, t: loss(row[None], t[None])))(z, target)
    leaf = z.clone().requires_grad_()
    loss(leaf, target, reduction="sum").backward()
    torch.testing.assert_close(per_sample, leaf.grad)


@pytest.mark.parametrize("name", ["sparsemax", "sparsegen_lin_per_row", "sparsehourglass"])
def test_forward_mode_dual_tensors(name):
    # Forward-mode AD outside functorch (torch.autograd.forward_ad): tangents are J v,
    # not the zeros a custom operator alone would give.
    f = MAPPINGS[name][0]
    x, v = _input(name), scores((4, 6), dtype=torch.float64, seed=8)
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(f(fwAD.make_dual(x, v))).tangent
    _, expected = jvp(f, (x,), (v,))
    torch.testing.assert_close(tangent, expected)
    assert tangent.abs().sum() > 0


def test_jvp_of_a_learnable_parameter():
    x = _input("sparsemax")
    lam = torch.full((4, 1), 0.2, dtype=torch.float64)
    dlam = torch.linspace(0.1, 0.4, 4, dtype=torch.float64)[:, None]
    _, tangent = jvp(lambda lam_: sg.sparsegen_lin(x, lam=lam_), (lam,), (dlam,))
    eps = 1e-6
    finite = (
        sg.sparsegen_lin(x, lam=lam + eps * dlam) - sg.sparsegen_lin(x, lam=lam - eps * dlam)
    ) / (2 * eps)
    torch.testing.assert_close(tangent, finite, atol=1e-6, rtol=1e-5)


CONES = {
    "sparsecone": lambda z, q: sg.sparsecone(z.abs() + 0.1, q=q),
    "sparsehourglass": lambda z, q: sg.sparsehourglass(z, q=q),
}


@pytest.mark.parametrize("name", list(CONES))
def test_forward_mode_derivatives_to_a_tensor_q(name):
    # A q tangent does not make q require grad: the scale must still be computed where
    # its tangent is seen (jvp, jacfwd and dual tensors gave zeros).
    f = CONES[name]
    x = _input("sparsemax")
    q = torch.tensor([[0.5], [1.0], [0.2], [2.0]], dtype=torch.float64)
    dq = torch.tensor([[1.0], [-0.5], [2.0], [0.3]], dtype=torch.float64)
    eps = 1e-6
    finite = (f(x, q + eps * dq) - f(x, q - eps * dq)) / (2 * eps)
    assert finite.abs().max() > 1e-3  # the test can fail
    _, tangent = jvp(lambda q_: f(x, q_), (q,), (dq,))
    torch.testing.assert_close(tangent, finite, atol=1e-6, rtol=1e-5)
    with fwAD.dual_level():
        dual = fwAD.unpack_dual(f(x, fwAD.make_dual(q, dq))).tangent
    torch.testing.assert_close(dual, finite, atol=1e-6, rtol=1e-5)
    forward, reverse = (transform(lambda q_: f(x, q_))(q) for transform in (jacfwd, jacrev))
    torch.testing.assert_close(forward, reverse)


@pytest.mark.parametrize("name", list(CONES))
def test_vmap_over_a_q_that_requires_grad_equals_the_loop(name):
    # stack_module_state's parameters require grad: an ensemble of learnable cones
    f = CONES[name]
    x = _input("sparsemax")
    qs = torch.tensor([[0.5], [1.0], [3.0]], dtype=torch.float64, requires_grad=True)
    batched = vmap(lambda q_: f(x, q_))(qs)
    looped = torch.stack([f(x, q_) for q_ in qs])
    torch.testing.assert_close(batched, looped)
    weights = torch.randn(
        looped.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    (batched_grad,) = torch.autograd.grad((batched * weights).sum(), qs)
    (looped_grad,) = torch.autograd.grad((looped * weights).sum(), qs)
    torch.testing.assert_close(batched_grad, looped_grad)


@pytest.mark.parametrize("algorithm", ["compiled", "sort", "michelot"])
@pytest.mark.parametrize(
    "f",
    [
        sg.sparsemax,
        lambda z, **kw: sg.sparsegen_lin(z, lam=0.6, **kw),
        lambda z, **kw: sg.sparsehourglass(z, q=0.5, **kw),
        lambda z, **kw: sg.sparsecone(z.abs() + 0.1, q=1.0, **kw),
        # compiled: their transforms' own autograd (sparsegen._ops._TransformFunction)
        lambda z, **kw: sg.sparsegen_exp(z, lam=0.3, **kw),
        lambda z, **kw: sg.sparsegen_sq(z, lam=-0.5, **kw),
    ],
    ids=["sparsemax", "sparsegen_lin", "sparsehourglass", "sparsecone", "exp", "sq"],
)
def test_double_backward(f, algorithm):
    x = scores((3, 6), dtype=torch.float64, seed=6).requires_grad_()
    assert gradcheck(lambda z: f(z, algorithm=algorithm), (x,))
    assert gradgradcheck(lambda z: f(z, algorithm=algorithm), (x,))


def test_double_backward_through_the_parameter():
    x = scores((3, 6), dtype=torch.float64, seed=6).requires_grad_()
    lam = torch.tensor([[0.1], [0.5], [-0.4]], dtype=torch.float64, requires_grad=True)
    assert gradgradcheck(lambda z, lam_: sg.sparsegen_lin(z, lam=lam_), (x, lam))


def test_sparsemax_second_derivative_is_zero():
    # Piecewise linear: its Hessian is exactly 0 away from the kinks.
    x = scores((7,), dtype=torch.float64, seed=3)
    assert torch.equal(hessian(lambda z: sg.sparsemax(z)[0])(x), torch.zeros(7, 7, dtype=x.dtype))
    scaled = hessian(lambda z: sg.sparsehourglass(z, q=0.5)[0])(x)  # α̂(z) makes it curved
    assert scaled.abs().sum() > 0
    torch.testing.assert_close(scaled, scaled.T)


def test_meta_and_fake_tensors_give_shapes():
    for f, _, _ in MAPPINGS.values():
        meta = f(torch.empty(4, 6, device="meta"))
        assert meta.shape == (4, 6) and meta.device.type == "meta"
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out = sg.sparsehourglass(torch.empty(3, 5), q=0.5, return_info=True)
    assert out.output.shape == (3, 5) and out.threshold.shape == (3,)
    assert out.support_size.dtype == torch.int64


def test_invalid_parameters_under_vmap_name_the_argument():
    x = scores((2, 4, 6), dtype=torch.float64)
    with pytest.raises(ValueError, match="lam must be < 1"):
        vmap(lambda z, lam_: sg.sparsegen_lin(z, lam=lam_))(
            x, torch.tensor([0.5, 2.0], dtype=x.dtype)
        )
    with pytest.raises(ValueError, match="q must be finite and >= 0"):
        vmap(lambda z, q: sg.sparsehourglass(z, q=q))(x, torch.tensor([0.5, -1.0], dtype=x.dtype))


DEGENERATE_HOURGLASS = {  # α̂ infinite where |Σz| + Kq = 0: the limit, a zero derivative
    "sum_normalization_pp": sg.sum_normalization_pp,
    "q=0": lambda z, **kw: sg.sparsehourglass(z, q=0.0, **kw),
    "q=0 tensor": lambda z, **kw: sg.sparsehourglass(z, q=torch.tensor(0.0).double(), **kw),
    "q subnormal": lambda z, **kw: sg.sparsehourglass(z, q=1e-320, **kw),
}


@pytest.mark.parametrize("masked", [False, True], ids=["", "masked"])
@pytest.mark.parametrize("name", list(DEGENERATE_HOURGLASS))
def test_forward_mode_is_zero_where_the_hourglass_scale_is_infinite(name, masked):
    # forward mode added the scale's tangent there, inf · 0 = NaN; jacrev cut those slices
    z = torch.tensor([[1.0, 0.5, -1.5, 0.0], [0.3, -1.2, 0.4, 0.2]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [True] * 4]) if masked else None
    f = functools.partial(DEGENERATE_HOURGLASS[name], mask=mask)
    forward, reverse = jacfwd(f)(z), jacrev(f)(z)
    assert (forward[0] == 0).all()  # the first slice sums to 0 where kept
    torch.testing.assert_close(forward, reverse)
    _, tangent = jvp(f, (z,), (torch.ones_like(z),))
    assert tangent.isfinite().all() and (tangent[0] == 0).all()


@pytest.mark.parametrize("name", DIFFERENTIABLE)
@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_batched_gradients_of_autograd_equal_the_jacobian(name):
    # autograd.grad(..., is_grads_batched=True), and so jacobian(vectorize=True) and
    # gradcheck(check_batched_grad=True), hand the backward legacy batched tensors, which
    # the numba VJP read as plain ones ("Batching rule not implemented for aten::detach")
    f, x = MAPPINGS[name][0], _input(name, (2, 5))
    vectorized = torch.autograd.functional.jacobian(f, x, vectorize=True)
    torch.testing.assert_close(vectorized, jacrev(f)(x))
    assert gradcheck(f, (x.requires_grad_(),), check_batched_grad=True)
