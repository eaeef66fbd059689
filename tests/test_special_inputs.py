"""Every algorithm keeps the same bad-input promises: a differential test of every sparse
mapping × every algorithm × a table of special inputs (forward and backward), a hypothesis
fuzz against the float64 reference, and a regression test per item of the audit."""

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import sparsemax_bisect

import sparsegen as sg
from sparsegen import losses

inf, nan = math.inf, math.nan
ALGORITHMS = ["sort", "michelot", "compiled"]

# The sparse mappings: each is one projection, so every algorithm must agree on it.
SPARSE = {
    "sparsemax": lambda x, **kw: sg.sparsemax(x, **kw),
    "sparsegen_lin": lambda x, **kw: sg.sparsegen_lin(x, lam=0.5, **kw),
    "sparsegen_exp": lambda x, **kw: sg.sparsegen_exp(x, lam=0.2, **kw),
    "sparsegen_sq": lambda x, **kw: sg.sparsegen_sq(x, lam=-0.5, **kw),
    "sparsecone": lambda x, **kw: sg.sparsecone(x, q=2.0, **kw),
    "sparsehourglass": lambda x, **kw: sg.sparsehourglass(x, q=0.5, **kw),
    "sparsehourglass_q0_masked": lambda x, **kw: sg.sparsehourglass(x, q=0.0, mask=x != 1.5, **kw),
    "sum_normalization_pp": lambda x, **kw: sg.sum_normalization_pp(x, **kw),
    "sparsegen_tanh": lambda x, **kw: sg.sparsegen(x, torch.tanh, lam=0.3, **kw),
}


def _rows(*rows):
    return torch.tensor(rows, dtype=torch.float64)


SPECIAL = {
    "nan": _rows([1.0, nan, 0.0, 2.0], [0.5, 0.1, -0.3, 0.2]),
    "-inf": _rows([1.0, -inf, 0.0, 2.0], [-inf, 0.3, -inf, 0.2]),
    "all -inf": _rows([-inf] * 4, [0.0, 1.0, 2.0, 3.0]),
    "+inf": _rows([inf, 0.0, inf, 1.0], [1.0, 2.0, 3.0, inf]),
    "all +inf": _rows([inf] * 4, [0.0, 1.0, 2.0, 3.0]),
    "mixed": _rows([inf, -inf, nan, 0.0], [inf, -inf, 1.0, 0.0]),
    "ties": _rows([1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]),
    "huge": _rows([1e38, -1e38, 3e37, 0.0], [1e300, 2e300, -1e300, 0.0]),
    "subnormal": _rows([4e-45, 3e-45, 3e-45, 0.0], [1e-310, 2e-310, -1e-310, 0.0]),
    "K = 1": _rows([0.3], [-inf]),
    "empty": torch.empty(2, 0, dtype=torch.float64),
}
DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16}


def _outputs_and_grads(f, x, algorithm):
    leaf = x.clone().requires_grad_()
    out = f(leaf, algorithm=algorithm)
    v = torch.linspace(-1, 1, x.numel(), dtype=x.dtype).reshape(x.shape)
    (torch.where(torch.isfinite(out), out, 0) * v).sum().backward()
    return out.detach(), leaf.grad


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("special", list(SPECIAL))
@pytest.mark.parametrize("name", list(SPARSE))
def test_every_algorithm_gives_the_same_answer(name, special, dtype):
    f = SPARSE[name]
    x = SPECIAL[special].to(DTYPES[dtype])
    atol = {"float64": 1e-10, "float32": 1e-5, "float16": 2e-3}[dtype]
    results = {a: _outputs_and_grads(f, x, a) for a in ALGORITHMS}
    out, grad = results["compiled"]
    assert out.dtype == x.dtype and out.shape == x.shape
    with torch.no_grad():  # the compiled transforms' own path (sum-normalization++'s only)
        no_grad = f(x, algorithm="compiled")
    torch.testing.assert_close(no_grad, out, atol=atol, rtol=0, equal_nan=True)
    for algorithm in ("sort", "michelot"):
        other_out, other_grad = results[algorithm]
        torch.testing.assert_close(other_out, out, atol=atol, rtol=0, equal_nan=True)
        torch.testing.assert_close(other_grad, grad, atol=atol, rtol=1e-3, equal_nan=True)
    # A slice is NaN as a whole or not at all, sums to 1 or is zeros, and passes a
    # finite gradient wherever its scores and output are finite.
    finite = torch.isfinite(out).all(-1)
    assert torch.isnan(out[~finite]).all()
    sums = out[finite].double().sum(-1)
    tolerance = 10 * atol + (1e-3 if dtype == "float16" else 0.0)
    assert torch.all(((sums - 1).abs() < tolerance) | (sums == 0))
    # (Not checked at extreme magnitudes, where the gradient itself overflows, nor
    # at Σz = 0 for q = 0, where the limit is discontinuous: see the README.)
    scale_invariant = name in ("sum_normalization_pp", "sparsehourglass_q0_masked")
    extreme = special in ("huge", "subnormal") or (special == "ties" and scale_invariant)
    if not extreme:
        assert torch.isfinite(grad[finite & torch.isfinite(x).all(-1)]).all()


@pytest.mark.parametrize("name", list(SPARSE))
def test_non_contiguous_and_transposed_inputs(name):
    f = SPARSE[name]
    x = torch.randn(6, 5, dtype=torch.float64)
    for algorithm in ALGORITHMS:
        torch.testing.assert_close(f(x.T, algorithm=algorithm), f(x.T.contiguous()))
        torch.testing.assert_close(f(x[:, ::2], algorithm=algorithm), f(x[:, ::2].contiguous()))


@settings(max_examples=int(os.environ.get("SPARSEGEN_FUZZ_EXAMPLES", 40)), deadline=None)
@given(
    values=st.lists(
        st.floats(-1e6, 1e6, allow_subnormal=True) | st.sampled_from([-inf, 0.0]),
        min_size=1,
        max_size=12,
    ),
    scale=st.floats(0.01, 100.0),
)
def test_fuzz_every_algorithm_against_the_reference(values, scale):
    # SPARSEGEN_FUZZ_EXAMPLES=5000 for a longer run.
    x = torch.tensor([values], dtype=torch.float64)
    finite = np.isfinite(x.numpy())
    expected = np.zeros_like(x.numpy())  # -inf scores get 0; only -inf: zeros
    if finite.any():
        expected[finite] = sparsemax_bisect(x.numpy()[finite] * scale)
    for algorithm in ALGORITHMS:
        out = sg.sparsegen_lin(x, lam=1 - 1 / scale, algorithm=algorithm)
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-9 * max(1.0, scale))


# ----- regression tests, one per item of the audit ------------------------------------


def test_minus_inf_scores_in_sparsehourglass_and_sum_normalization_pp():
    z = torch.tensor([[1.0, -inf, 0.0]])
    for algorithm in ALGORITHMS:
        for out in (sg.sparsehourglass(z, q=1.0, algorithm=algorithm), sg.sum_normalization_pp(z)):
            torch.testing.assert_close(out, torch.tensor([[0.5, 0.0, 0.5]]))


def test_all_minus_inf_gives_zeros_and_plus_inf_shares_the_mass():
    dead = torch.full((2, 3), -inf)
    winners = torch.tensor([[inf, 1.0, inf], [2.0, inf, -inf]])
    expected = torch.tensor([[0.5, 0.0, 0.5], [0.0, 1.0, 0.0]])
    for algorithm in ALGORITHMS:
        for f in (
            lambda x, a=algorithm: sg.sparsehourglass(x, q=1.0, algorithm=a),
            lambda x, a=algorithm: sg.sum_normalization_pp(x, algorithm=a),
            lambda x, a=algorithm: sg.sparsecone(x, q=1.0, algorithm=a),
        ):
            assert torch.equal(f(dead), torch.zeros(2, 3))
            torch.testing.assert_close(f(winners), expected)


@pytest.mark.parametrize(
    "f",
    [
        sg.softmax,
        sg.sparsemax,
        sg.hardmax,
        sg.spherical_softmax,
        lambda x, mask: sg.sum_normalization(x.abs(), mask=mask),
        lambda x, mask: sg.sparsegen_lin(x, lam=0.5, mask=mask),
        lambda x, mask: sg.sparsegen_exp(x, lam=0.5, mask=mask),
        lambda x, mask: sg.sparsegen_sq(x, lam=0.5, mask=mask),
        lambda x, mask: sg.sparsecone(x.abs(), q=1.0, mask=mask),
        lambda x, mask: sg.sparsehourglass(x, q=1.0, mask=mask),
        sg.sum_normalization_pp,
    ],
)
def test_documented_zero_slices_pass_zero_gradients(f):
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[False] * 4, [True] * 4, [True, False, True, True]])
    out = f(x, mask=mask)
    assert torch.equal(out[0].detach(), torch.zeros(4, dtype=x.dtype))
    if out.requires_grad:
        (out * torch.randn_like(out)).sum().backward()
        assert torch.isfinite(x.grad).all()
        assert torch.equal(x.grad[0], torch.zeros(4, dtype=x.dtype))
    minus_inf = torch.full((2, 4), -inf, dtype=torch.float64, requires_grad=True)
    softmax_out = sg.softmax(minus_inf)
    softmax_out.sum().backward()
    assert torch.equal(softmax_out, torch.zeros(2, 4, dtype=torch.float64))
    assert torch.equal(minus_inf.grad, torch.zeros(2, 4, dtype=torch.float64))


@pytest.mark.parametrize(
    "f",
    [
        sg.softmax,
        sg.hardmax,
        sg.spherical_softmax,
        sg.sum_normalization,
        lambda x: sg.sparsegen_exp(x, lam=0.2),
        lambda x: sg.sparsegen_sq(x, lam=0.2),
        sg.sum_normalization_pp,
        lambda x: sg.sparsehourglass(x, q=0.0),
    ],
)
def test_an_empty_dimension_gives_an_empty_output(f):
    for shape in [(3, 0), (0, 4), (0,)]:
        assert f(torch.empty(shape)).shape == shape


def test_multihead_attention_over_no_key():
    attention = sg.nn.MultiheadAttention(4, 1, mapping="softmax")
    out, weights = attention(torch.randn(2, 1, 4), torch.randn(0, 1, 4), torch.randn(0, 1, 4))
    assert out.shape == (2, 1, 4) and weights.shape == (1, 2, 0)


def test_numpy_scalars_are_parameters():
    from sklearn.model_selection import ParameterGrid

    x = torch.randn(3, 5)
    for lam in (np.float32(0.5), np.float64(0.5), np.array(0.5)):
        torch.testing.assert_close(sg.sparsegen_lin(x, lam=lam), sg.sparsegen_lin(x, lam=0.5))
    for params in ParameterGrid({"q": np.arange(1, 4)}):
        torch.testing.assert_close(
            sg.sparsehourglass(x, **params), sg.sparsehourglass(x, q=float(params["q"]))
        )
    with pytest.raises(TypeError, match="lam must be a number or a tensor; got bool"):
        sg.sparsegen_lin(x, lam=np.bool_(True))


@pytest.mark.parametrize("q", [1e308, inf])
def test_huge_q_is_sparsemax(q):
    x = torch.randn(4, 6, dtype=torch.float64)
    x[1, 2] = -inf
    for algorithm in ALGORITHMS:
        for f in (sg.sparsecone, sg.sparsehourglass):
            torch.testing.assert_close(f(x, q=q, algorithm=algorithm), sg.sparsemax(x))
    q_tensor = torch.full((4, 1), 1e308, dtype=torch.float64)
    torch.testing.assert_close(sg.sparsehourglass(x, q=q_tensor), sg.sparsemax(x))
    y = (torch.rand(4, 6) > 0.5).double()
    y[:, 0] = 1
    torch.testing.assert_close(
        losses.sparsehourglass_hinge_loss(x.nan_to_num(neginf=-5.0), y, q=q),
        losses.sparsegen_lin_hinge_loss(x.nan_to_num(neginf=-5.0), y, lam=0.0),
    )


def test_subnormal_scores_keep_their_ratios():
    z = torch.tensor([[4e-45, 3e-45, 3e-45, 0.0]])  # 3, 2, 2, 0 times the smallest float32
    expected = torch.tensor([[3 / 7, 2 / 7, 2 / 7, 0.0]])
    for algorithm in ALGORITHMS:
        out = sg.sum_normalization_pp(z, algorithm=algorithm)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_sparsecone_outside_its_domain_keeps_masked_entries_zero():
    z = torch.tensor([[-5.0, -4.0, 1.0], [1.0, 2.0, 3.0]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    for algorithm in ALGORITHMS:
        out = sg.sparsecone(z, q=0.1, mask=mask, algorithm=algorithm, return_info=True)
        assert torch.isnan(out.output[0, :2]).all() and out.output[0, 2] == 0
        assert out.output[1, 1] == 0 and torch.isfinite(out.output[1]).all()


def test_losses_stay_finite_at_minus_inf_and_take_numpy_targets():
    z = torch.tensor([[2.0, -inf, 0.5], [0.1, 0.2, -inf]], requires_grad=True)
    y = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    index = np.array([0, 1])
    for loss in (
        lambda: losses.logistic_loss(z, y),
        lambda: losses.sparsemax_loss(z, index),
        lambda: losses.sparsemax_loss(z, y),
        lambda: losses.softmax_loss(z, index),
        lambda: losses.sparsegen_lin_hinge_loss(z, y, lam=0.3),
        lambda: losses.sparsehourglass_hinge_loss(z, y, q=1.0),
    ):
        z.grad = None
        value = loss()
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(z.grad).all()
    with pytest.raises(TypeError, match="target must be a tensor or a NumPy array"):
        losses.sparsemax_loss(z, "labels")
