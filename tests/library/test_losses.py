"""Losses: against the papers' literal formulas, their gradients, their zeros, and bad input."""

import functools
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import sparsemax_bisect
from torch.autograd import gradcheck

import sparsegen as sg
from sparsegen import losses
from sparsegen import nn as snn


def random_labels(rows, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(rows, k, generator=g) < 0.3).double()
    y[:, 0] = 1.0  # every row has a label
    return y


def literal_sparsemax_loss(z, eta):
    z = z.numpy()
    p = sg.sparsemax(torch.from_numpy(z)).numpy()
    out = []
    for zi, pi, ei in zip(z, p, eta.numpy(), strict=True):
        support = pi > 0
        tau = (zi[support].sum() - 1) / support.sum()
        out.append(-ei @ zi + 0.5 * np.sum(zi[support] ** 2 - tau**2) + 0.5 * ei @ ei)
    return np.array(out)


def literal_hinge(z, y, margin_fn, c):
    """Eq. 7/8 term by term: O(K²) loops over ordered pairs."""
    out = []
    for zi, yi in zip(z.tolist(), y.tolist(), strict=True):
        eta = np.array(yi) / max(sum(yi), 1)
        margins = margin_fn(np.array(zi), eta)
        total = 0.0
        for i in range(len(zi)):
            for j in range(len(zi)):
                if yi[i] and yi[j]:
                    total += c * abs(zi[i] - zi[j])
                elif yi[i] and not yi[j]:
                    total += max(margins[i] - c * (zi[i] - zi[j]), 0.0)
        out.append(total)
    return np.array(out)


def test_sparsemax_loss_matches_the_paper_formula():
    z = torch.randn(8, 7, dtype=torch.float64) * 2
    y = random_labels(8, 7)
    eta = y / y.sum(-1, keepdim=True)
    ours = losses.sparsemax_loss(z, y, reduction="none")
    np.testing.assert_allclose(ours.numpy(), literal_sparsemax_loss(z, eta), atol=1e-12)
    classes = torch.randint(0, 7, (8,))
    one_hot = torch.nn.functional.one_hot(classes, 7).double()
    np.testing.assert_allclose(
        losses.sparsemax_loss(z, classes, reduction="none").numpy(),
        literal_sparsemax_loss(z, one_hot),
        atol=1e-12,
    )


def test_sparsemax_loss_properties_and_gradient():
    z = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    y = random_labels(6, 5)
    loss = losses.sparsemax_loss(z, y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, z)
    torch.testing.assert_close(grad, sg.sparsemax(z.detach()) - y / y.sum(-1, keepdim=True))
    assert (losses.sparsemax_loss(z.detach(), y, reduction="none") >= -1e-12).all()
    target = torch.tensor([[0.5, 0.5, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert (
        losses.sparsemax_loss(torch.tensor([[3.0, 3.0, 0.0, -1.0, 2.0]]).double(), target) < 1e-12
    )
    assert gradcheck(lambda s: losses.sparsemax_loss(s, y), (z,))


def _sparsemax_jacobian_reference(z):
    """``diag(s) − s sᵀ/|S|``, ``S`` the support of the bisection reference's sparsemax."""
    s = torch.from_numpy((sparsemax_bisect(z.numpy()) > 0).astype(np.float64))
    return torch.diag(s) - torch.outer(s, s) / s.sum()


def test_sparsemax_loss_second_derivative_is_the_sparsemax_jacobian():
    # ∇L = sparsemax(z) − η, so ∇²L = J_sparsemax: what a Hessian-vector product of a
    # loss built on it must see (it was silently 0: the backward was not differentiable).
    z = torch.tensor([1.0, -0.3, 0.2, 0.9, -1.2, 0.7], dtype=torch.float64)
    target = torch.tensor([2])
    expected = _sparsemax_jacobian_reference(z)
    assert expected.abs().sum() > 0

    def loss(z_):
        return losses.sparsemax_loss(z_.unsqueeze(0), target)

    torch.testing.assert_close(torch.func.hessian(loss)(z), expected)
    torch.testing.assert_close(torch.func.jacrev(torch.func.jacrev(loss))(z), expected)
    leaf = z.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(loss(leaf), leaf, create_graph=True)
    v = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64)
    (hvp,) = torch.autograd.grad(gradient @ v, leaf)
    torch.testing.assert_close(hvp, expected @ v)


def test_sparsemax_loss_differentiates_a_soft_target():
    # A target that asks for a gradient (a teacher's distribution) gets ∂L/∂η (it got
    # none), in reverse and forward mode, against central differences.
    z = torch.tensor([[1.0, -0.3, 0.2, 0.9, -1.2]], dtype=torch.float64)
    y = torch.tensor([[0.2, 0.1, 0.5, 0.3, 0.4]], dtype=torch.float64)
    v = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)[None]
    eps = 1e-6
    finite = torch.stack(
        [
            (losses.sparsemax_loss(z, y + eps * e) - losses.sparsemax_loss(z, y - eps * e))
            / (2 * eps)
            for e in torch.eye(5, dtype=torch.float64)
        ]
    )[None]
    leaf = y.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(losses.sparsemax_loss(z, leaf), leaf)
    torch.testing.assert_close(gradient, finite, atol=1e-7, rtol=1e-6)
    _, tangent = torch.func.jvp(lambda y_: losses.sparsemax_loss(z, y_), (y,), (v,))
    torch.testing.assert_close(tangent, (finite * v).sum(), atol=1e-7, rtol=1e-6)


def test_softmax_loss_is_kl_and_cross_entropy():
    z = torch.randn(6, 5, dtype=torch.float64)
    y = random_labels(6, 5)
    eta = y / y.sum(-1, keepdim=True)
    log_p = torch.log_softmax(z, -1)
    kl = (torch.where(eta > 0, eta * torch.log(eta), 0.0) - eta * log_p).sum(-1)
    torch.testing.assert_close(losses.softmax_loss(z, y, reduction="none"), kl)
    classes = torch.randint(0, 5, (6,))
    torch.testing.assert_close(
        losses.softmax_loss(z, classes), torch.nn.functional.cross_entropy(z, classes)
    )


def test_logistic_loss():
    z = torch.randn(6, 5, dtype=torch.float64)
    y = random_labels(6, 5)
    expected = (torch.log1p(torch.exp(z)) - y * z).sum(-1)
    torch.testing.assert_close(losses.logistic_loss(z, y, reduction="none"), expected)


def test_logistic_loss_differentiates_hard_labels_as_soft_ones():
    # ∂L/∂y = −z for any y: at labels of exactly 0 or 1 the where that takes 0 · inf as 0
    # had replaced the whole product, and gave −softplus(z) or softplus(−z) (+0.127 for −2)
    z = torch.tensor([[2.0, -1.0, 0.5, -3.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0, 0.0, 0.3]], dtype=torch.float64, requires_grad=True)
    losses.logistic_loss(z, y, reduction="sum").backward()
    torch.testing.assert_close(y.grad, -z)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    for argnums in (0, 1):
        ours = torch.func.jacfwd(losses.logistic_loss, argnums)(z, y.detach(), "sum")
        theirs = torch.func.jacfwd(lambda a, b: bce(a, b, reduction="sum"), argnums)(z, y.detach())
        torch.testing.assert_close(ours, theirs)
    # the infinite scores that cost exactly 0 still do, with finite gradients
    z = torch.tensor([[-math.inf, math.inf]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    loss = losses.logistic_loss(z, y, reduction="sum")
    loss.backward()
    assert loss.item() == 0 and z.grad.eq(0).all() and y.grad.eq(0).all()


@pytest.mark.parametrize("lam", [0.0, 0.5, -1.0])
def test_sparsegen_lin_hinge_matches_literal_eq8(lam):
    z = torch.randn(10, 9, dtype=torch.float64) * 2
    y = random_labels(10, 9, seed=1)
    ours = losses.sparsegen_lin_hinge_loss(z, y, lam=lam, reduction="none")
    expected = literal_hinge(z, y, lambda zi, eta: eta, 1 / (1 - lam))
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-10)


@pytest.mark.parametrize("q", [0.1, 1.0, 5.0])
def test_sparsehourglass_hinge_matches_literal_eq7(q):
    z = torch.randn(10, 9, dtype=torch.float64) * 2
    y = random_labels(10, 9, seed=2)

    def margins(zi, eta):
        alpha = (1 + len(zi) * q) / (abs(zi.sum()) + len(zi) * q)
        return eta / alpha

    ours = losses.sparsehourglass_hinge_loss(z, y, q=q, reduction="none")
    np.testing.assert_allclose(ours.numpy(), literal_hinge(z, y, margins, 1.0), atol=1e-10)


def test_hinge_losses_take_one_parameter_per_row():
    # a (rows, 1) λ or q is each row's own (as the mappings take one per slice); it used to
    # broadcast against the (rows,) losses into a (rows, rows) matrix, and q to raise
    z = torch.randn(4, 7, dtype=torch.float64) * 2
    y = random_labels(4, 7, seed=3)
    lam = torch.tensor([[0.5], [-1.0], [0.0], [0.9]], dtype=torch.float64, requires_grad=True)
    ours = losses.sparsegen_lin_hinge_loss(z, y, lam=lam, reduction="none")
    expected = [literal_hinge(z[r : r + 1], y[r : r + 1], lambda zi, eta: eta, 1 / (1 - v))[0]
                for r, v in enumerate(lam.detach().flatten().tolist())]  # fmt: skip
    np.testing.assert_allclose(ours.detach().numpy(), expected, atol=1e-10)
    ours.sum().backward()
    assert lam.grad.shape == (4, 1) and lam.grad.abs().sum() > 0
    q = torch.tensor([[0.1], [1.0], [5.0], [2.0]], dtype=torch.float64)

    def margins(q):
        return lambda zi, eta: eta * (abs(zi.sum()) + len(zi) * q) / (1 + len(zi) * q)

    ours = losses.sparsehourglass_hinge_loss(z, y, q=q, reduction="none")
    expected = [literal_hinge(z[r : r + 1], y[r : r + 1], margins(v), 1.0)[0]
                for r, v in enumerate(q.flatten().tolist())]  # fmt: skip
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-10)
    assert losses.sparsehourglass_hinge_loss(z, y, q=q).item() == pytest.approx(np.mean(expected))
    with pytest.raises(ValueError, match="one value per slice"):
        losses.sparsegen_lin_hinge_loss(z, y, lam=lam.detach().flatten())
    for bad in (0.0, -1.0):  # (a negative one was told "q must be >= 0", not the loss's rule)
        with pytest.raises(ValueError, match="a tensor q must be finite and > 0"):
            losses.sparsehourglass_hinge_loss(z, y, q=torch.full((4, 1), bad).double())
        with pytest.raises(ValueError, match="q must be > 0"):
            losses.sparsehourglass_hinge_loss(z, y, q=bad)


def test_hinge_losses_keep_half_scores_dtype():
    z, y = torch.randn(3, 5).half(), random_labels(3, 5)
    assert losses.sparsegen_lin_hinge_loss(z, y).dtype == torch.float16
    assert losses.sparsehourglass_hinge_loss(z, y).dtype == torch.float16


def test_hinge_losses_are_zero_exactly_at_the_target():
    y = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    # sparsegen-lin(z, λ) = (0.5, 0.5, 0, 0) iff equal labelled scores and a margin of
    # (1-λ)η_i below them for the others.
    lam = 0.5
    z = torch.tensor([[2.0, 2.0, 1.75, -3.0]], dtype=torch.float64)
    torch.testing.assert_close(sg.sparsegen_lin(z, lam=lam), y / 2)
    assert losses.sparsegen_lin_hinge_loss(z, y, lam=lam) == 0
    assert losses.sparsegen_lin_hinge_loss(z + torch.tensor([[0, 0, 0.3, 0]]), y, lam=lam) > 0


def test_hinge_gradients():
    z = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    y = random_labels(4, 6, seed=3)
    assert gradcheck(lambda s: losses.sparsegen_lin_hinge_loss(s, y, lam=0.3), (z,))
    assert gradcheck(lambda s: losses.sparsehourglass_hinge_loss(s, y, q=0.7), (z,))


def test_large_k_is_not_quadratic():
    z = torch.randn(2, 20000, dtype=torch.float64)
    y = (torch.rand(2, 20000) < 0.001).double()
    y[:, 0] = 1
    value = losses.sparsegen_lin_hinge_loss(z, y)
    assert torch.isfinite(value)


def test_negative_infinity_scores_stay_finite_where_unlabelled():
    z = torch.tensor([[2.0, 1.0, -math.inf, 0.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    for loss in (
        losses.sparsemax_loss,
        losses.softmax_loss,
        losses.sparsegen_lin_hinge_loss,
        losses.sparsehourglass_hinge_loss,
    ):
        assert torch.isfinite(loss(z, y)), loss.__name__
    assert losses.sparsemax_loss(z, torch.tensor([[0.0, 0.0, 1.0, 0.0]])) == math.inf


def test_rows_without_labels():
    z = torch.randn(2, 4, dtype=torch.float64)
    y = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="no label"):
        losses.sparsemax_loss(z, y)
    with pytest.raises(ValueError, match="no label"):
        losses.softmax_loss(z, y)
    per_row = losses.sparsegen_lin_hinge_loss(z, y, reduction="none")
    assert per_row[1] == 0  # documented: both sums are empty


def test_bad_arguments():
    z = torch.randn(2, 4)
    with pytest.raises(ValueError, match="reduction must be one of"):
        losses.sparsemax_loss(z, torch.tensor([0, 1]), reduction="avg")
    with pytest.raises(ValueError, match="target must be class indices"):
        losses.sparsemax_loss(z, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 4\)"):
        losses.sparsemax_loss(z, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="lam must be < 1"):
        losses.sparsegen_lin_hinge_loss(z, torch.ones(2, 4), lam=1.0)
    with pytest.raises(ValueError, match="q must be > 0"):
        losses.sparsehourglass_hinge_loss(z, torch.ones(2, 4), q=0.0)
    with pytest.raises(TypeError, match="floating-point"):
        losses.logistic_loss(torch.ones(2, 4, dtype=torch.long), torch.ones(2, 4))


def test_numpy_value_and_gradient():
    z = np.random.default_rng(0).normal(size=(5, 4))
    y = np.eye(4)[[0, 1, 2, 3, 0]]
    value, grad = losses.loss_and_gradient(losses.sparsemax_loss, z, y, reduction="sum")
    np.testing.assert_allclose(grad, sg.sparsemax(z) - y, atol=1e-12)
    np.testing.assert_allclose(
        value, literal_sparsemax_loss(torch.from_numpy(z), torch.from_numpy(y)).sum()
    )


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 9),
    st.integers(1, 40),
    st.sampled_from([0.01, 1.0, 100.0]),
    st.floats(-3, 0.95),
    st.sampled_from([1e-3, 0.5, 7.0]),
    st.sampled_from(["mean", "sum"]),
    st.integers(0, 2**31 - 1),
)
def test_compiled_hinge_value_and_gradient_equal_the_torch_losses(
    rows, k, spread, lam, q, reduction, seed
):
    # The compiled kernel behind loss_and_gradient against the torch definitions and
    # autograd: rows with no label, one label, all labels.
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(rows, k)) * spread
    y = (rng.random((rows, k)) < rng.random()).astype(float)
    y[0] = 1.0 if seed % 3 == 0 else y[0]
    for loss, kwargs in (
        (losses.sparsegen_lin_hinge_loss, {"lam": lam}),
        (losses.sparsehourglass_hinge_loss, {"q": q}),
    ):
        assert losses._compiled_hinge(loss, z, y, dict(kwargs, reduction=reduction))
        value, grad = losses.loss_and_gradient(loss, z, y, reduction=reduction, **kwargs)
        scores = torch.tensor(z, requires_grad=True)
        expected = loss(scores, torch.from_numpy(y), reduction=reduction, **kwargs)
        (expected_grad,) = torch.autograd.grad(expected, scores)
        assert value == pytest.approx(expected.item(), rel=1e-10, abs=1e-10)
        np.testing.assert_allclose(grad, expected_grad.numpy(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("offset", [1e16, -1e100, 1e300])
def test_compiled_hinge_shifts_huge_scores_as_the_torch_losses_do(offset):
    # c z_i − m_i formed on scores of 1e16 lost the margin m_i to rounding: tied scores
    # gave a loss of 0 where each (label, other) pair costs its η_i
    z = offset + np.array([[0.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.5, 0.25]]) * abs(offset) * 1e-15
    y = np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    for loss, kwargs in (
        (losses.sparsegen_lin_hinge_loss, {"lam": -2.0}),
        (losses.sparsehourglass_hinge_loss, {"q": 1.0}),
    ):
        value, grad = losses.loss_and_gradient(loss, z, y, **kwargs)
        expected, expected_grad = losses.loss_and_gradient(loss, z, torch.from_numpy(y), **kwargs)
        assert value == pytest.approx(expected, rel=1e-12)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-12)
    tied, _ = losses.loss_and_gradient(losses.sparsegen_lin_hinge_loss, z[:1], y[:1])
    assert tied == 2.0  # four pairs of η_i = 1/2


def test_compiled_hinge_leaves_sums_past_float64s_range_to_the_torch_losses():
    # the kernel's plain row sum overflowed (inf where the loss is 5e307) and a label
    # 2e308 below the top met 0 · (−inf) (NaN where the loss is inf)
    cases = [
        (losses.sparsehourglass_hinge_loss, {"q": 1.0}, [[1e308, 1e308, 0.0]], [[1.0, 0, 0]]),
        (losses.sparsegen_lin_hinge_loss, {"lam": 0.0}, [[1e308, -1e308, 0.0]], [[0.0, 1, 0]]),
    ]
    for loss, kwargs, z, y in cases:
        z, y = np.array(z), np.array(y)
        value, grad = losses.loss_and_gradient(loss, z, y, **kwargs)
        expected, expected_grad = losses.loss_and_gradient(loss, z, torch.from_numpy(y), **kwargs)
        assert value == expected and np.array_equal(grad, expected_grad)
    assert losses.loss_and_gradient(*cases[0][:1], np.array(cases[0][2]), np.array(cases[0][3]))[
        0
    ] == pytest.approx(5e307)


def test_label_weights_summing_past_their_dtypes_range_are_refused():
    # (‖y‖₁ = inf made η = 0: a sparsemax loss of −0.5, documented ≥ 0)
    z = torch.tensor([[0.5, 0.2, 0.1]])
    for loss in (losses.sparsemax_loss, losses.softmax_loss):
        for dtype in (torch.float32, torch.bfloat16):
            y = torch.tensor([[2e38, 2e38, 0.0]], dtype=dtype)
            with pytest.raises(ValueError, match=r"label weights of 1 row\(s\) sum past"):
                loss(z, y)
        assert loss(z, torch.tensor([[1e38, 1e38, 0.0]])) >= 0  # (within range: taken)


@pytest.mark.parametrize(
    ("dtype", "scales"), [(torch.float32, [1e21, 1e30]), (torch.float64, [1e200, 1e300])]
)
def test_hourglass_hinge_gradient_stays_finite_where_the_scale_squared_underflows(dtype, scales):
    # The margin η/α̂ differentiated through α̂ gave −∂α̂/α̂² = inf · 0 = NaN where α̂²
    # underflows; once |Σz| dwarfs Kq the margin is |Σz|·η/(1 + Kq), and the loss's
    # gradient no longer depends on the scores' size (the loss grows with it)
    y = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    base = torch.tensor([[1.0, -0.5, 0.25, 0.0], [-2.0, 0.5, 0.25, -0.125]], dtype=dtype)
    expected = None
    for scale in (1e15, *scales):
        z = (base * scale).requires_grad_()
        loss = losses.sparsehourglass_hinge_loss(z, y, q=1.0, reduction="sum")
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(z.grad).all(), (scale, z.grad)
        expected = z.grad if expected is None else expected
        torch.testing.assert_close(z.grad, expected, rtol=1e-5, atol=1e-6)


def test_hinge_inputs_the_kernel_does_not_take_go_to_torch():
    z = np.random.default_rng(1).normal(size=(3, 4))
    y = np.eye(4)[[0, 1, 2]]
    lin, hourglass = losses.sparsegen_lin_hinge_loss, losses.sparsehourglass_hinge_loss
    for loss, kwargs in (
        (lin, {"lam": torch.tensor(0.5)}),  # a tensor parameter
        (lin, {"reduction": "none"}),
        (hourglass, {"q": math.inf}),
        (lin, {}),  # labels as a tensor, below
    ):
        target = torch.from_numpy(y) if not kwargs else y
        assert losses._compiled_hinge(loss, z, target, kwargs) is None
    # and there the torch path's errors speak
    with pytest.raises(ValueError, match="q must be > 0"):
        losses.loss_and_gradient(hourglass, z, y, q=0.0)
    for labels in (-y, 2 * y, 0.5 * y):  # 0/1 only: the torch path names the rule
        assert losses._compiled_hinge(lin, z, labels, {}) is None
        with pytest.raises(ValueError, match="sparsegen_lin_hinge_loss: labels must be 0 or 1"):
            losses.loss_and_gradient(lin, z, labels)
    value, _ = losses.loss_and_gradient(hourglass, z, y, q=math.inf)  # α̂ = 1: sparsemax's
    assert value == pytest.approx(losses.loss_and_gradient(lin, z, y)[0])
    # a bool is no number, on the kernel's path too
    with pytest.raises(TypeError, match="got bool"):
        losses.loss_and_gradient(hourglass, z, y, q=True)
    with pytest.raises(TypeError, match="got bool"):
        losses.loss_and_gradient(lin, z, y, lam=False)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        losses.loss_and_gradient(lin, z, y, reduction="none")


def test_loss_modules():
    z = torch.randn(3, 5, dtype=torch.float64)
    y = random_labels(3, 5)
    pairs = [
        (snn.SparsemaxLoss(), losses.sparsemax_loss(z, y)),
        (snn.SoftmaxLoss(reduction="sum"), losses.softmax_loss(z, y, reduction="sum")),
        (snn.LogisticLoss(), losses.logistic_loss(z, y)),
        (snn.SparsegenLinHingeLoss(lam=0.2), losses.sparsegen_lin_hinge_loss(z, y, lam=0.2)),
        (snn.SparsehourglassHingeLoss(q=2.0), losses.sparsehourglass_hinge_loss(z, y, q=2.0)),
    ]
    for module, expected in pairs:
        torch.testing.assert_close(module(z, y), expected)


INDEX_LOSSES = [(snn.SparsemaxLoss, losses.sparsemax_loss), (snn.SoftmaxLoss, losses.softmax_loss)]


@pytest.mark.parametrize(("module", "loss"), INDEX_LOSSES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ignore_index_drops_those_slices_like_cross_entropy(reduction, module, loss):
    """Slices whose class is ignore_index add nothing and get no gradient; "mean" averages the
    rest: the same bookkeeping as torch.nn.CrossEntropyLoss."""
    torch.manual_seed(0)
    z = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, -100, 4, 0, -100, 2])
    kept = target != -100
    ours = module(reduction=reduction)(z, target)
    alone = loss(z[kept], target[kept], reduction="none")
    if reduction == "none":
        assert torch.equal(ours[~kept], torch.zeros(2, dtype=torch.float64))
        torch.testing.assert_close(ours[kept], alone)
    else:
        torch.testing.assert_close(ours, alone.mean() if reduction == "mean" else alone.sum())
        ours.backward()
        assert torch.equal(z.grad[~kept], torch.zeros(2, 5, dtype=torch.float64))
    ce = torch.nn.CrossEntropyLoss(reduction=reduction)(z.detach(), target)
    assert ce.shape == ours.shape  # same shapes as torch's
    # NumPy class indices are ignored alike (they were range-checked as labels instead)
    as_numpy = loss(z.detach(), target.numpy(), reduction=reduction)
    torch.testing.assert_close(as_numpy, ours.detach())
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 5\)"):
        loss(z, torch.tensor([1, -100, 4, 0, 7, 2]))


def _rows_of_every_kind(dtype):
    """Scores with their class indices: random rows (the class in the support or not),
    the class alone in the support at a large offset, and infinite and NaN scores."""
    inf, nan = math.inf, math.nan
    g = torch.Generator().manual_seed(3)
    rows = torch.randn(8, 5, generator=g, dtype=torch.float64).tolist()
    index = torch.randint(0, 5, (8,), generator=g).tolist()
    special = [
        ([1e6 + 5, 1e6, 1e6, 1e6 - 3, 0.0], 0),  # p = δ_k: exactly 0
        ([1e6 + 5, 1e6, 1e6, 1e6 - 3, 0.0], 2),  # k far outside the support
        ([-inf, 1.0, 2.0, 3.0, 0.0], 0),  # the class at -inf: inf
        ([-inf, 1.0, 2.0, 3.0, 0.0], 3),  # another class at -inf: finite
        ([inf, 1.0, 0.0, 0.0, 0.0], 0),
        ([1.0, inf, 0.0, 0.0, 0.0], 0),
        ([inf, inf, 0.0, 0.0, 0.0], 0),
        ([-inf] * 5, 1),
        ([nan, 1.0, 2.0, 3.0, 0.0], 2),
    ]
    rows += [r for r, _ in special]
    index += [k for _, k in special]
    return torch.tensor(rows, dtype=dtype), torch.tensor(index)


@pytest.mark.parametrize("loss", [losses.sparsemax_loss, losses.softmax_loss])
def test_infinite_scores_cost_the_limit_of_large_ones(loss):
    # +inf scores share the mass, as in every mapping: the loss is its limit as they
    # grow (a loss at scores of 1e4 in their place), where inf − inf made it NaN (softmax
    # always, sparsemax where they shared the mass); +inf where the target has mass on a
    # finite score beside them, NaN with a NaN score
    inf = math.inf
    z = torch.tensor([[inf, 1.0, 0.0, -inf], [inf, inf, 0.0, 2.0], [0.5, inf, inf, inf],
                      [inf, -2.0, inf, 1.0], [inf, math.nan, 1.0, 0.0]],
                     dtype=torch.float64)  # fmt: skip
    labels = torch.tensor([[1.0, 0, 0, 0], [0.7, 0.3, 0, 0], [0, 0.2, 0.2, 0.6],
                           [0.5, 0.5, 0, 0], [1.0, 0, 0, 0]], dtype=torch.float64)  # fmt: skip
    large = torch.where(z == inf, 1e4, z)
    for target in (labels, torch.tensor([0, 1, 2, 1, 0])):
        got = loss(z.requires_grad_(), target, reduction="none")
        expected = loss(large, target, reduction="none")
        grows = expected[:4] > 1e3  # (with the large scores: the target's mass off them)
        assert grows.any() and (got[:4][grows] == inf).all()
        torch.testing.assert_close(got[:4][~grows], expected[:4][~grows], atol=1e-12, rtol=0)
        assert got[4].isnan()
        got[:4][~grows].sum().backward()
        assert torch.isfinite(z.grad[:4]).all()
        z.grad = None


@pytest.mark.parametrize("loss", [losses.sparsemax_loss, losses.softmax_loss])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_class_indices_cost_what_their_one_hot_labels_cost(loss, dtype):
    # Class indices take their own formula (a gather, no one-hot): the same values and
    # gradients as the label matrix that says the same, on every kind of row.
    z, index = _rows_of_every_kind(dtype)
    one_hot = torch.nn.functional.one_hot(index, 5).to(dtype)
    by_index = z.clone().requires_grad_()
    by_labels = z.clone().requires_grad_()
    got = loss(by_index, index, reduction="none")
    expected = loss(by_labels, one_hot, reduction="none")
    tolerance = {"atol": 1e-12, "rtol": 1e-12} if dtype == torch.float64 else {}
    torch.testing.assert_close(got, expected, equal_nan=True, **tolerance)
    if loss is losses.sparsemax_loss:
        assert got[8] == 0  # exactly, at scores of a million
    finite = torch.isfinite(expected)
    assert finite.sum() >= 10
    g = torch.randn(finite.sum().item(), dtype=dtype, generator=torch.Generator().manual_seed(1))
    (got[finite] * g).sum().backward()
    (expected[finite] * g).sum().backward()
    torch.testing.assert_close(by_index.grad, by_labels.grad, equal_nan=True, **tolerance)


def test_sparsemax_loss_forward_mode_with_class_indices():
    # jvp, dual tensors and jacfwd: the tangent is ∇L·v = (p − δ_k)·v
    z, index = _rows_of_every_kind(torch.float64)
    z, index = z[:10], index[:10]  # finite rows
    v = torch.randn(z.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = ((sg.sparsemax(z) - torch.nn.functional.one_hot(index, 5)) * v).sum(-1)
    _, tangent = torch.func.jvp(lambda s: losses.sparsemax_loss(s, index, "none"), (z,), (v,))
    torch.testing.assert_close(tangent, expected)
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(z, v)
        out = losses.sparsemax_loss(dual, index, reduction="none")
        torch.testing.assert_close(torch.autograd.forward_ad.unpack_dual(out).tangent, expected)
    jacobian = torch.func.jacfwd(lambda s: losses.sparsemax_loss(s, index, "sum"))(z)
    torch.testing.assert_close(jacobian, sg.sparsemax(z) - torch.nn.functional.one_hot(index, 5))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softmax_loss_ignore_index_equals_cross_entropy(reduction):
    # with class indices the softmax loss is cross-entropy: torch's, ignore_index and all
    z = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, 7, 4, 0, 7, 2])
    ours = snn.SoftmaxLoss(reduction=reduction, ignore_index=7)(z, target)
    leaf = z.detach().clone().requires_grad_()
    ce = torch.nn.CrossEntropyLoss(reduction=reduction, ignore_index=7)(leaf, target)
    torch.testing.assert_close(ours, ce)
    ours.sum().backward()
    ce.sum().backward()
    torch.testing.assert_close(z.grad, leaf.grad)
    assert "ignore_index=7" in repr(snn.SoftmaxLoss(ignore_index=7))


@pytest.mark.parametrize("loss", [losses.softmax_loss, losses.sparsemax_loss])
def test_ignore_index_must_be_an_int(loss):
    # 1.5 was taken and ignored nothing; None failed inside torch.where
    z, target = torch.randn(2, 3), torch.tensor([0, 1])
    for bad in (1.5, None, True):
        with pytest.raises(TypeError, match=rf"{loss.__name__}: ignore_index must be an int"):
            loss(z, target, ignore_index=bad)
    torch.testing.assert_close(loss(z, target, ignore_index=np.int64(1)), loss(z[:1], target[:1]))


LABEL_LOSSES = [
    losses.sparsemax_loss,
    losses.softmax_loss,
    losses.logistic_loss,
    losses.sparsegen_lin_hinge_loss,
    losses.sparsehourglass_hinge_loss,
]


@pytest.mark.parametrize("loss", LABEL_LOSSES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_labels_raise(loss, bad):
    z = torch.randn(3, 4, dtype=torch.float64)
    y = random_labels(3, 4)
    y[2, 1] = bad
    with pytest.raises(ValueError, match="labels must be finite"):
        loss(z, y)
    with pytest.raises(ValueError, match="labels must be finite"):
        losses.loss_and_gradient(loss, z.numpy(), y.numpy())


@pytest.mark.parametrize("bad", [-0.5, -math.inf, math.nan, 1.5])
@pytest.mark.parametrize(
    "loss, out_of_range",
    [
        (losses.sparsemax_loss, "labels must be non-negative"),
        (losses.softmax_loss, "labels must be non-negative"),
        (losses.logistic_loss, "labels must lie in \\[0, 1\\]"),
    ],
    ids=["sparsemax_loss", "softmax_loss", "logistic_loss"],
)
def test_each_bad_label_is_named_after_the_one_reduction_that_passes_good_ones(
    loss, out_of_range, bad
):
    # One aminmax passes labels that are finite and in range; any other goes on to the
    # elementwise checks, whose error names the rule broken
    z = torch.randn(3, 4, dtype=torch.float64)
    y = random_labels(3, 4)
    loss(z, y)
    y[1, 2] = bad
    if bad == 1.5 and loss is not losses.logistic_loss:
        loss(z, y)  # a weight of the target distribution y/‖y‖₁
        return
    expected = out_of_range if math.isfinite(bad) else "labels must be finite"
    with pytest.raises(ValueError, match=expected):
        loss(z, y)


@pytest.mark.parametrize("loss", LABEL_LOSSES, ids=lambda f: f.__name__)
def test_empty_batch_mean_is_nan_like_cross_entropy_on_both_paths(loss):
    z, y = np.zeros((0, 4)), np.zeros((0, 4))
    empty = torch.zeros(0, 4, dtype=torch.float64)
    assert torch.isnan(torch.nn.functional.cross_entropy(empty, torch.zeros(0, dtype=torch.long)))
    assert torch.isnan(loss(torch.from_numpy(z), torch.from_numpy(y)))
    value, grad = losses.loss_and_gradient(loss, z, y, reduction="mean")
    assert math.isnan(value) and grad.shape == (0, 4)
    assert losses.loss_and_gradient(loss, z, y, reduction="sum")[0] == 0


def test_softmax_loss_takes_one_value_with_a_constant_target_or_one_that_requires_grad():
    # A constant target takes xlogy and nansum, one that requires grad the where formulas
    # (whose derivative in η is 0, not NaN, at η = 0): the same values and ∂L/∂z,
    # also at ±inf and NaN scores
    values = [0.0, 1.5, -2.0, math.inf, -math.inf, math.nan]
    z = torch.tensor(list(itertools.product(values, repeat=3)), dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64).expand(len(z), 3)
    results = []
    for target_grad in (False, True):
        leaf, target = z.clone().requires_grad_(), y.clone().requires_grad_(target_grad)
        loss = losses.softmax_loss(leaf, target, reduction="none")
        (torch.where(loss.isnan(), 0.0, loss)).sum().backward()
        results.append((loss.detach(), leaf.grad))
    (loss, grad), (expected_loss, expected_grad) = results
    torch.testing.assert_close(loss, expected_loss, equal_nan=True, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, expected_grad, equal_nan=True, rtol=1e-12, atol=0)


def test_softmax_loss_differentiates_a_soft_target_with_zeros():
    # A sparse teacher has exact zeros: ∂L/∂y was NaN over the whole row (0 · log 0 in the
    # backward of the entropy, 0 · (−inf) of a masked class's score, both spread by y/‖y‖₁).
    z = torch.tensor([[1.0, 0.5, -1.0, 0.2], [2.0, -math.inf, 0.3, -0.4]], dtype=torch.float64)
    y = torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.2, 0.0, 0.0, 0.6]], dtype=torch.float64)
    mass = y > 0

    def on_mass(values):  # the loss as a function of the entries with mass only
        return losses.softmax_loss(z, torch.zeros_like(y).masked_scatter(mass, values), "sum")

    values = y[mass].clone().requires_grad_()
    assert gradcheck(on_mass, (values,))
    leaf = y.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(losses.softmax_loss(z, leaf, "sum"), leaf)
    assert torch.isfinite(gradient).all()
    # where η has mass, ∂L/∂η = log η + 1 − z; through η = y/‖y‖₁, ∂L/∂y = (g − η·g)/‖y‖₁,
    # and η·g needs only the entries with mass
    total = y.sum(-1, keepdim=True)
    eta = y / total
    g = torch.where(mass, torch.log(torch.where(mass, eta, 1.0)) + 1 - z, 0.0)
    expected = (g - (eta * g).sum(-1, keepdim=True)) / total
    torch.testing.assert_close(gradient[mass], expected[mass])


def test_hinge_losses_refuse_labels_other_than_0_and_1():
    # Soft or weighted labels moved the hinges' zero away from the mapping's output
    # (positive at sparsegen_lin(z) = η, zero elsewhere): y = (2, 1, 0, 0) is refused.
    y = torch.tensor([[2.0, 1.0, 0.0, 0.0]])
    z = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    for loss in (losses.sparsegen_lin_hinge_loss, losses.sparsehourglass_hinge_loss):
        name = loss.__name__
        for labels in (y, y / 3, torch.tensor([[1.0, 0.5, 0.0, 0.0]])):
            with pytest.raises(ValueError, match=f"{name}: labels must be 0 or 1"):
                loss(z, labels)
        with pytest.raises(ValueError, match=f"{name}: labels must be 0 or 1"):
            losses.loss_and_gradient(loss, z.double().numpy(), y.numpy())
        assert loss(z, y > 0) == 0  # bool and 0/1 labels are fine: the target, here
        # traced: a run-time assertion in the graph, with the same rule
        compiled = torch.compile(loss, fullgraph=True, backend="eager")
        assert compiled(z, (y > 0).float()) == 0
        with pytest.raises(RuntimeError, match="labels must be 0 or 1"):
            compiled(z, y)


def test_read_only_numpy_targets_and_scores_raise_no_warning():
    Y = np.array([[1, 0, 0, 1], [0, 1, 0, 0]])
    Z = np.random.default_rng(0).normal(size=(2, 4))
    Y.setflags(write=False)
    Z.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        losses.sparsemax_loss(torch.from_numpy(Z.copy()), Y)
        losses.loss_and_gradient(losses.sparsemax_loss, Z, Y)


def test_numpy_targets_and_scores_with_negative_strides():
    # views such as Y[:, ::-1] or np.flip(Y, 1): torch refused their negative strides
    Y = np.array([[1, 0, 0, 1], [0, 1, 0, 0]])
    z = torch.randn(2, 4, dtype=torch.float64)
    flipped = torch.from_numpy(Y[:, ::-1].copy())
    torch.testing.assert_close(
        losses.sparsemax_loss(z, Y[:, ::-1]), losses.sparsemax_loss(z, flipped)
    )
    torch.testing.assert_close(
        losses.sparsegen_lin_hinge_loss(z, np.flip(Y, 1)),
        losses.sparsegen_lin_hinge_loss(z, flipped),
    )
    torch.testing.assert_close(
        losses.softmax_loss(z, np.array([3, 1])[::-1]), losses.softmax_loss(z, torch.tensor([1, 3]))
    )
    Z = np.random.default_rng(0).normal(size=(2, 4))
    value, grad = losses.loss_and_gradient(losses.softmax_loss, Z[:, ::-1], Y[::-1])
    expected, expected_grad = losses.loss_and_gradient(
        losses.softmax_loss, Z[:, ::-1].copy(), Y[::-1].copy()
    )
    assert value == expected
    np.testing.assert_array_equal(grad, expected_grad)
    # a 0-d class index of 1-D scores stays 0-d (cross-entropy's single sample)
    torch.testing.assert_close(
        losses.softmax_loss(z[0], np.array(2)),
        torch.nn.functional.cross_entropy(z[0], torch.tensor(2)),
    )


@pytest.mark.parametrize(
    "loss", [losses.sparsegen_lin_hinge_loss, losses.sparsehourglass_hinge_loss]
)
def test_hinge_losses_at_infinite_label_scores(loss):
    # inf where a label's score is -inf (documented, as sparsemax_loss), the limit 0 where
    # the one label's score is +inf: they were NaN (0 · inf for a label with no negative above)
    inf = math.inf
    cases = [
        ([-inf, 1.0, 0.0], [1.0, 1.0, 1.0], inf),
        ([-inf, 1.0, -inf], [1.0, 1.0, 0.0], inf),
        ([inf, 1.0, 0.0], [1.0, 0.0, 0.0], 0.0),
    ]
    for z, y, expected in cases:
        assert loss(torch.tensor([z]), torch.tensor([y])).item() == expected, (z, y)


def test_float_class_indices_say_they_must_be_integers():
    z = torch.zeros(2, 4)
    for loss in (losses.sparsemax_loss, losses.softmax_loss):
        name = loss.__name__
        with pytest.raises(
            ValueError, match=f"{name}: class indices must be an integer tensor; got torch.float32"
        ):
            loss(z, torch.tensor([0.0, 1.0]))
        with pytest.raises(ValueError, match="target must be class indices of shape"):
            loss(z, torch.ones(2, 3))  # a shape that fits neither is still that error


def test_targets_that_are_no_numbers_or_no_class_indices_are_named():
    # an object array (a list holding None, a mixed DataFrame's values) had torch's "can't
    # convert np.ndarray of type numpy.object_", and the compiled hinge path took it; a bool
    # tensor of the batch shape (a mask passed by mistake) was read as class indices
    z = torch.zeros(2, 3, dtype=torch.float64)
    labels = np.array([[1, 0, 0], [0, 1, None]], dtype=object)
    for loss in (losses.sparsemax_loss, losses.softmax_loss, losses.logistic_loss):
        with pytest.raises(TypeError, match=f"{loss.__name__}: target must hold numbers"):
            loss(z, labels)
        with pytest.raises(TypeError, match="got an array of dtype object"):
            loss(z, [[1, 0, 0], [0, None, 1]])
    for loss in (losses.sparsegen_lin_hinge_loss, losses.sparsehourglass_hinge_loss):
        with pytest.raises(TypeError, match=f"{loss.__name__}: target must hold numbers"):
            losses.loss_and_gradient(loss, z.numpy(), np.array([[1, 0, 0]] * 2, dtype=object))
        with pytest.raises(ValueError, match="scores need a class dimension"):  # (IndexError)
            losses.loss_and_gradient(loss, np.float64(1.0), np.float64(1.0))
    for loss in (losses.sparsemax_loss, losses.softmax_loss):
        with pytest.raises(
            ValueError, match=r"class indices must be an integer tensor; got torch\.bool"
        ):
            loss(z, torch.tensor([True, False]))
        loss(z, torch.tensor([[True, False, False], [False, True, True]]))  # labels: taken


def test_an_out_of_range_class_index_is_named_by_the_loss_under_inductor():
    # inductor's bounds check on the gather ("index out of bounds: 0 <= tmp28 < 5L") had
    # fired before the graph's assertion of the library's rule
    compiled = torch.compile(losses.sparsemax_loss, backend="inductor")
    z = torch.zeros(2, 5)
    torch.testing.assert_close(
        compiled(z, torch.tensor([0, 4])), losses.sparsemax_loss(z, torch.tensor([0, 4]))
    )
    for bad in (5, -1):
        with pytest.raises(
            RuntimeError, match=r"sparsemax_loss: class indices must lie in \[0, K\)"
        ):
            compiled(z, torch.tensor([0, bad]))


def test_torchs_class_dimension_is_named_in_the_shape_error():
    # cross_entropy's (N, K, L) scores with (N, L) targets: the classes go last here
    z, target = torch.zeros(2, 4, 7), torch.zeros(2, 7, dtype=torch.long)
    for loss in (losses.sparsemax_loss, losses.softmax_loss):
        with pytest.raises(ValueError, match=r"not along dim 1 .* z\.movedim\(1, -1\)"):
            loss(z, target)
        loss(z.movedim(1, -1), target)
    with pytest.raises(ValueError) as error:
        losses.softmax_loss(torch.zeros(2, 4), torch.ones(2, 3))
    assert "movedim" not in str(error.value)  # (only where the layout is torch's)


def test_loss_modules_check_their_parameter_when_built_and_show_it():
    # as the mapping modules do, and as the functions would at the first forward
    for module in (snn.SoftmaxLoss, snn.SparsemaxLoss, snn.LogisticLoss, snn.SparsegenLinHingeLoss):
        with pytest.raises(ValueError, match=rf"{module.__name__}: reduction must be one of"):
            module(reduction="avg")  # (it was taken, and refused at the first forward)
    with pytest.raises(ValueError, match="SparsegenLinHingeLoss: lam must be < 1"):
        snn.SparsegenLinHingeLoss(lam=2.0)
    with pytest.raises(TypeError, match="lam must be a number or a tensor"):
        snn.SparsegenLinHingeLoss(lam="0.5")
    for bad in (0.0, -1.0, torch.zeros(2, 1)):
        rule = r"SparsehourglassHingeLoss: (a tensor )?q must be (finite and )?> 0"
        with pytest.raises(ValueError, match=rule):
            snn.SparsehourglassHingeLoss(q=bad)
    assert (
        repr(snn.SparsegenLinHingeLoss(lam=0.9))
        == "SparsegenLinHingeLoss(lam=0.9, reduction='mean')"
    )
    module = snn.SparsehourglassHingeLoss(q=5.0, reduction="sum")
    assert repr(module) == "SparsehourglassHingeLoss(q=5, reduction='sum')"
    per_row = snn.SparsehourglassHingeLoss(q=torch.ones(3, 1))
    assert "q=tensor of shape (3, 1)" in repr(per_row)
    # set later, checked then (a plain attribute took 5.0 and failed at the next forward)
    with pytest.raises(ValueError, match="SparsegenLinHingeLoss: lam must be < 1"):
        snn.SparsegenLinHingeLoss().lam = 5.0
    with pytest.raises(ValueError, match="SparsehourglassHingeLoss: q must be"):
        module.q = -1.0
    assert module.q == 5.0
    # a tensor as given: a λ that requires grad gets its gradient, a Parameter is registered
    lam = torch.tensor(0.3, requires_grad=True)
    z, y = torch.randn(2, 4), torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])
    snn.SparsegenLinHingeLoss(lam=lam)(z, y).backward()
    assert lam.grad is not None and lam.grad != 0
    learnt = snn.SparsegenLinHingeLoss(lam=torch.nn.Parameter(torch.tensor(0.2)))
    assert [p.item() for p in learnt.parameters()] == [pytest.approx(0.2)]
    with pytest.raises(ValueError, match="lam must be < 1"):
        learnt.lam = torch.nn.Parameter(torch.tensor(5.0))
    # lists as the mapping modules take them: one value per row
    z, y = torch.randn(2, 4), torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])
    listed = snn.SparsegenLinHingeLoss(lam=[[0.1], [0.5]], reduction="none")
    expected = losses.sparsegen_lin_hinge_loss(
        z, y, lam=torch.tensor([[0.1], [0.5]]), reduction="none"
    )
    torch.testing.assert_close(listed(z, y), expected)


def test_logistic_loss_needs_labels_in_the_unit_interval():
    # outside [0, 1] the loss is unbounded below (-10 at z = 10, y = 2)
    for z, y in (([[10.0]], [[2.0]]), ([[-10.0]], [[-1.0]])):
        with pytest.raises(ValueError, match=r"logistic_loss: labels must lie in \[0, 1\]"):
            losses.logistic_loss(torch.tensor(z), torch.tensor(y))
    # soft labels inside are torch's binary cross-entropy, summed over labels
    z = torch.randn(4, 3, dtype=torch.float64)
    y = torch.rand(4, 3, dtype=torch.float64)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
    torch.testing.assert_close(losses.logistic_loss(z, y, reduction="none"), expected.sum(-1))


@pytest.mark.parametrize("loss", [losses.softmax_loss, losses.sparsemax_loss])
def test_a_half_mean_over_many_rows_is_finite(loss):
    # summed in float16 before the division, the mean of 70,000 losses near 2.7 was inf
    torch.manual_seed(0)
    z, target = torch.randn(70_000, 10), torch.randint(0, 10, (70_000,))
    half = loss(z.half(), target)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), loss(z, target), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize(
    ("module", "loss"),
    [(sg.nn.SoftmaxLoss, losses.softmax_loss), (sg.nn.SparsemaxLoss, losses.sparsemax_loss)],
)
def test_an_index_loss_module_pickled_without_ignore_index_still_runs(module, loss):
    module = module()
    del module.__dict__["ignore_index"]  # as a module pickled before the argument existed
    z, target = torch.randn(3, 4), torch.tensor([0, 1, 3])
    torch.testing.assert_close(module(z, target), loss(z, target))


@pytest.mark.parametrize(
    "loss", [losses.sparsegen_lin_hinge_loss, losses.sparsehourglass_hinge_loss]
)
def test_a_nan_score_makes_its_rows_hinge_loss_nan(loss):
    # a NaN threshold sorted past every negative, or a NaN label score dropped by the
    # spread's where, had counted as no violation: loss 0, and L-BFGS saw an optimum
    z = torch.tensor([[math.nan, 1.0, 2.0], [1.0, math.nan, 2.0], [0.5, 1.0, 2.0]])
    y = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    got = loss(z, y, reduction="none")
    assert got[:2].isnan().all()
    torch.testing.assert_close(got[2], loss(z[2:], y[2:], reduction="none")[0])
    value, _ = losses.loss_and_gradient(loss, z[:1].double().numpy(), y[:1].numpy())
    assert math.isnan(value)


@pytest.mark.parametrize("loss", [losses.softmax_loss, losses.sparsemax_loss])
def test_narrow_integer_class_indices_are_compared_with_ignore_index_as_int64(loss):
    # in uint8, ignore_index -100 is 156 and -1 is 255: such a class index was skipped
    z = torch.tensor([[0.0, 1.0, 2.0, 3.0]] * 2)
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
        loss(z, torch.tensor([156, 1], dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
        loss(z, torch.tensor([255, 1], dtype=torch.uint8), ignore_index=-1)
    narrow = loss(z, torch.tensor([3, 1], dtype=torch.uint8), reduction="none")
    torch.testing.assert_close(narrow, loss(z, torch.tensor([3, 1]), reduction="none"))


@pytest.mark.parametrize("loss", [losses.softmax_loss, losses.sparsemax_loss])
def test_half_scores_take_label_weights_beyond_halfs_range(loss):
    # cast to float16 before normalising, ‖y‖₁ = 80,000 was inf and η zero
    z = torch.tensor([[1.0, 2.0, 0.0]])
    for y in (torch.tensor([[40000.0, 40000.0, 0.0]]), torch.tensor([[70000.0, 0.0, 0.0]])):
        expected = loss(z.double(), y.double())
        torch.testing.assert_close(loss(z.half(), y).double(), expected, atol=2e-3, rtol=2e-3)


LARGE_SCORE_LOSSES = [
    losses.softmax_loss,
    losses.sparsemax_loss,
    losses.sparsegen_lin_hinge_loss,
    functools.partial(losses.sparsegen_lin_hinge_loss, lam=0.5),
    losses.sparsehourglass_hinge_loss,
]


@pytest.mark.parametrize("loss", LARGE_SCORE_LOSSES, ids=lambda f: getattr(f, "__name__", "lam"))
@pytest.mark.parametrize("offset", [1e2, 1e4])
def test_float32_losses_of_large_scores_keep_the_precision_of_their_differences(loss, offset):
    # Each loss (the hourglass hinge's α̂ aside) depends on the score differences only: in
    # float32 it loses no more than those differences' own rounding, whatever the offset.
    # The float32 scores are exact in float64, so float64 is the reference on the same input.
    g = torch.Generator().manual_seed(3)
    z = (offset + torch.randn(64, 12, generator=g)).float()
    y = random_labels(64, 12, seed=3)
    got = loss(z, y, reduction="none")
    expected = loss(z.double(), y, reduction="none")
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-5)
    if loss is losses.sparsemax_loss:
        assert (got >= 0).all()  # (below 0 by cancelling digits of the offset)
    if loss is losses.softmax_loss:  # and with class indices (sparsemax's keeps τ's rounding)
        index = torch.randint(0, 12, (64,), generator=g)
        got = loss(z, index, reduction="none")
        expected = loss(z.double(), index, reduction="none")
        torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("loss", [losses.sparsemax_loss, losses.softmax_loss])
def test_half_scores_further_apart_than_the_half_range_give_a_finite_loss(loss):
    # z - max was formed in float16: -80,000 is -inf there, and (p - η)·(-inf) made inf
    z = torch.tensor([[40000.0, -40000.0, 0.0]])
    y = torch.tensor([[1.0, 1.0, 0.0]])
    for dtype in (torch.float16, torch.bfloat16):
        half = z.to(dtype).requires_grad_()
        got = loss(half, y, reduction="none")
        assert got.dtype == dtype
        torch.testing.assert_close(got, loss(z, y, reduction="none").to(dtype))
        got.sum().backward()
        assert half.grad.dtype == dtype and torch.isfinite(half.grad).all()
