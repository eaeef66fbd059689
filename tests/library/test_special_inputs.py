"""Every algorithm keeps the same bad-input promises: a differential test of every sparse
mapping × every algorithm × a table of special inputs (forward and backward), a hypothesis
fuzz against the float64 reference, and a regression test per item of the audit."""

import itertools
import math
import os

import numpy as np
import pytest
import torch
from conftest import ALGORITHMS
from host_reads import checked_as_on_a_device
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import scaled_sparsemax_reference, sparsemax_bisect

import sparsegen as sg
from sparsegen import losses

inf, nan = math.inf, math.nan

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
    # sparsegen_lin's λ = 0.5 puts the three lower entries exactly at τ after scaling
    "at τ after scaling": _rows([1.0, 0.5, 0.5, 0.5], [2.0, 1.5, 1.5, -1.0]),
    # sums beyond float32 (first row) and float64 (second): sparsecone's α is tiny there
    "huge, tiny scale": _rows([3e38, 2e38, 3.2e38, 1e38], [1.7e308, 1.1e308, 1.6e308, 1e308]),
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


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("mapping", [sg.sparsecone, sg.sparsehourglass])
def test_a_float64_sum_overflowing_both_ways_is_summed_again_in_units(mapping, algorithm):
    # Σz = big + 3, but partial sums reach +inf and -inf: NaN, which must be summed
    # again in units (SUM_UNIT) as an infinite sum is (the scale is tiny, not NaN)
    big = 1.6e308
    x = torch.tensor([[big, -big, big, 1.0, big, -big, 1.0, 1.0]], dtype=torch.float64)
    expected = torch.tensor([[1, 0, 1, 0, 1, 0, 0, 0]], dtype=torch.float64) / 3
    for requires_grad in (False, True):
        out = mapping(x.clone().requires_grad_(requires_grad), q=1.0, algorithm=algorithm)
        torch.testing.assert_close(out.detach(), expected)


@pytest.mark.parametrize("layout", ["rows", "columns"])  # the numba sum, torch's
@pytest.mark.parametrize("mapping", [sg.sparsecone, sg.sparsehourglass])
def test_a_moderate_sum_whose_partial_sums_overflow_has_a_finite_gradient(mapping, layout):
    # Σz is a few units, but partial sums overflow in both sums' orders: summed again in a
    # unit, the scale's denominator Σz/unit + Kq/unit must not be so small that its
    # gradient, ∝ 1/denominator², overflows (in units of max |z| it would: NaN everywhere)
    big = 1e308
    row = torch.tensor([[big, -big, 2.0, -big, big, -3.0, 0.5]], dtype=torch.float64)
    x = row if layout == "rows" else row.t().contiguous()
    dim = -1 if layout == "rows" else 0
    leaf = x.clone().requires_grad_()
    q = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    out = mapping(leaf, q=q, dim=dim)
    expected = torch.tensor([[0.5, 0, 0, 0, 0.5, 0, 0]], dtype=torch.float64)
    assert torch.equal(out.detach().reshape(1, -1), expected)
    grad, grad_q = torch.autograd.grad(out.reshape(-1)[0], (leaf, q))
    # α·J e₀ over the tied support {0, 4} (Jz = 0 there, so nothing reaches q), whatever
    # α the sum's rounding gave: +α/2 and −α/2 there, 0 elsewhere
    grad = grad.reshape(-1)
    assert torch.isfinite(grad).all() and grad[0] > 0 and grad[0] == -grad[4]
    assert grad[[1, 2, 3, 5, 6]].eq(0).all() and grad_q == 0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("k", [4, 5, 6])
def test_minus_inf_beside_scores_whose_sum_overflows_decides_the_sum(k, algorithm):
    # Σz = -inf (the README's rule: α̂ → 0, the finite scores share the mass), but the
    # finite ones' partial sums overflowed to +inf first on some algorithms and lengths:
    # inf - inf = NaN, and in the rescue's unit -inf must stay -inf
    big = torch.finfo(torch.float64).max / 2
    x = torch.tensor([[big] * (k - 1) + [-inf]], dtype=torch.float64)
    expected = torch.tensor([[1.0] * (k - 1) + [0.0]], dtype=torch.float64) / (k - 1)
    for f in (sg.sum_normalization_pp, lambda x, **kw: sg.sparsehourglass(x, q=1.0, **kw)):
        torch.testing.assert_close(f(x, algorithm=algorithm), expected)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("q_grad", [False, True])
@pytest.mark.parametrize("mapping", [sg.sparsecone, sg.sparsehourglass])
def test_a_slice_of_minus_inf_passes_zero_gradient_with_a_tensor_q(mapping, q_grad, algorithm):
    # The cone's scale is NaN there (Σz = -inf), the projection's gradient 0: their
    # product is 0, as with a float q, not NaN
    z = torch.tensor([[-inf] * 3, [0.3, 0.2, 0.9]], dtype=torch.float64, requires_grad=True)
    q = torch.tensor([[1.0], [0.5]], dtype=torch.float64, requires_grad=q_grad)
    out = mapping(z, q=q, algorithm=algorithm)
    assert torch.equal(out[0].detach(), torch.zeros(3, dtype=torch.float64))
    (out * torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)).sum().backward()
    assert torch.equal(z.grad[0], torch.zeros(3, dtype=torch.float64))
    assert torch.isfinite(z.grad[1]).all() and z.grad[1].abs().sum() > 0
    if q_grad:
        assert q.grad[0].item() == 0 and torch.isfinite(q.grad[1]).all()


SCALED = {
    "sparsegen_lin, learnt λ": lambda z, p, **kw: sg.sparsegen_lin(z, lam=p - 0.25, **kw),
    "sparsecone": lambda z, p, **kw: sg.sparsecone(z, q=0.5, **kw),
    "sparsecone, learnt q": lambda z, p, **kw: sg.sparsecone(z, q=p + 0.25, **kw),
    "sparsehourglass": lambda z, p, **kw: sg.sparsehourglass(z, q=0.5, **kw),
    "sparsehourglass, learnt q": lambda z, p, **kw: sg.sparsehourglass(z, q=p + 0.25, **kw),
    "sum_normalization_pp": lambda z, p, **kw: sg.sum_normalization_pp(z, **kw),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("name", "row", "grad"),
    [
        ("sparsecone", [math.inf, 1.0, 0.5, -3.0], [nan, 1.0, 2.0, 3.0]),
        ("sparsehourglass", [-math.inf, 1.0, 2.0, 0.5], [1.0, math.inf, 2.0, 3.0]),
    ],
)
def test_a_slice_whose_scale_is_not_usable_passes_nothing_through_it(name, row, grad, dtype):
    # α = 0 (a +inf sum) or inf: the slice takes the first-order limit, and its scale's term
    # is 0 even where the incoming gradient is NaN or inf, not 0 · NaN over the slice;
    # the same from the kernel (plain backward) and the torch formulas (double backward)
    x = torch.tensor([row], dtype=dtype, requires_grad=True)
    out = getattr(sg, name)(x, q=0.5)
    g = torch.tensor([grad], dtype=dtype)
    (by_kernel,) = torch.autograd.grad(out, x, g, retain_graph=True)
    (by_torch,) = torch.autograd.grad(out, x, g, create_graph=True)
    off_support = out.detach()[0] == 0
    assert by_kernel[0, off_support].eq(0).all(), by_kernel
    torch.testing.assert_close(by_torch.detach(), by_kernel, equal_nan=True)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("name", list(SCALED))
def test_a_nan_slice_passes_zero_gradient_to_its_scores_and_the_parameter(name, algorithm):
    # The README's rule for a NaN slice, a NaN score's or sparsecone's outside its domain
    # (Σz + Kq ≤ 0): 0, also through the scale's gradient, which its NaN output must not reach
    f = SCALED[name]
    finite = torch.tensor([[0.3, 0.2, 0.9, -0.4], [1.0, 0.8, 0.9, 0.1]], dtype=torch.float64)
    nan_rows = torch.tensor([[1.0, nan, 0.0, 2.0], [-3.0, -1.0, -2.0, 0.5]], dtype=torch.float64)
    v = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64)

    def gradients(z):
        z = z.clone().requires_grad_()
        p = torch.tensor(0.25, dtype=torch.float64, requires_grad=True)
        out = f(z, p, algorithm=algorithm)
        (torch.where(out.isnan(), 0.0, out) * v).sum().backward()
        return out.detach(), z.grad, p.grad

    z = torch.cat([finite, nan_rows])
    out, z_grad, p_grad = gradients(z)
    nan_slices = out.isnan().all(-1)
    assert nan_slices.tolist() == [False, False, True, "cone" in name]  # (|Σz|: hourglass')
    _, expected_z_grad, expected_p_grad = gradients(z[~nan_slices])
    assert torch.equal(z_grad[nan_slices], torch.zeros(int(nan_slices.sum()), 4))
    torch.testing.assert_close(z_grad[~nan_slices], expected_z_grad)
    if expected_p_grad is not None:
        torch.testing.assert_close(p_grad, expected_p_grad)
    # forward mode alike: 0 over those slices (sparsecone's had been NaN), the others' as
    # without them
    p = torch.tensor(0.25, dtype=torch.float64)
    tangent = torch.func.jvp(lambda t: f(t, p, algorithm=algorithm), (z,), (torch.ones_like(z),))[1]
    assert torch.equal(tangent[nan_slices], torch.zeros(int(nan_slices.sum()), 4))
    kept = z[~nan_slices]
    expected = torch.func.jvp(lambda t: f(t, p, algorithm=algorithm), (kept,), (kept * 0 + 1,))[1]
    torch.testing.assert_close(tangent[~nan_slices], expected)


SECOND_ORDER_ROWS = {
    "+inf": ([1.0, inf, 2.0], torch.float64),
    "-inf": ([1.0, -inf, 2.0], torch.float64),
    "nan": ([1.0, nan, 2.0], torch.float64),
    "outside sparsecone's domain": ([-2.0, -1.0, -3.0], torch.float64),
    "a scale whose square underflows float32": ([1e20, 2e20, 3e20], torch.float32),
    "a zero sum": ([0.0, 0.0, 0.0], torch.float32),
}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("row", list(SECOND_ORDER_ROWS))
@pytest.mark.parametrize(
    "f",
    [
        lambda z, **kw: sg.sparsecone(z, q=0.5, **kw),
        lambda z, **kw: sg.sparsehourglass(z, q=0.5, **kw),
        # (α̂ ≈ 1/(Kq) squared overflows float32, times the zero sum's sign 0)
        lambda z, **kw: sg.sparsehourglass(z, q=1e-30, **kw),
        sg.sum_normalization_pp,
        lambda z, **kw: sg.sparsegen_lin(
            z, lam=torch.tensor(0.25, dtype=z.dtype, requires_grad=True), **kw
        ),
    ],
    ids=[
        "sparsecone",
        "sparsehourglass",
        "sparsehourglass, tiny q",
        "sum_normalization_pp",
        "sparsegen_lin, learnt λ",
    ],
)
def test_second_derivatives_of_special_rows_are_finite(f, row, algorithm):
    # A scale of 0, inf or NaN (a +inf sum's α, a NaN slice's) or whose square underflows
    # is never divided by nor differentiated through: Hessian-vector products stay
    # finite (a gradient penalty summed over a batch would spread a NaN to all of it)
    values, dtype = SECOND_ORDER_ROWS[row]
    z = torch.tensor([values, [0.3, -0.2, 0.9]], dtype=dtype, requires_grad=True)
    w = torch.tensor([0.3, -0.5, 0.9], dtype=dtype)
    (gradient,) = torch.autograd.grad(
        (torch.nan_to_num(f(z, algorithm=algorithm)) * w).sum(), z, create_graph=True
    )
    (hessian_vector,) = torch.autograd.grad(  # (sparsegen-lin's is 0: linear in z)
        (gradient * gradient).sum(), z, allow_unused=True, materialize_grads=True
    )
    assert torch.isfinite(gradient).all() and torch.isfinite(hessian_vector).all()


PARAMETER_GRADIENTS = {
    "sparsegen_lin": lambda z, p, **kw: sg.sparsegen_lin(z, lam=p, **kw),
    "sparsegen_exp": lambda z, p, **kw: sg.sparsegen_exp(z, lam=p, **kw),
    "sparsegen_sq": lambda z, p, **kw: sg.sparsegen_sq(z, lam=p, **kw),
    "sparsecone": lambda z, p, **kw: sg.sparsecone(z, q=p + 0.5, **kw),
    "sparsehourglass": lambda z, p, **kw: sg.sparsehourglass(z, q=p + 0.5, **kw),
}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("name", list(PARAMETER_GRADIENTS))
def test_a_slice_at_its_infinite_limit_adds_nothing_to_a_shared_parameters_gradient(
    name, algorithm
):
    # Beside +inf scores (-inf squared, for sparsegen-sq) a slice is the limit, the same
    # for any λ or q: its share of their gradient is 0, not NaN, and its scores' finite
    # (0 beside one +inf; sparsegen-lin's between tied +inf is sparsemax's, at a tie)
    f = PARAMETER_GRADIENTS[name]
    finite = torch.tensor([[0.3, 0.2, 0.9, -0.4], [1.0, 0.8, 0.9, 0.1]], dtype=torch.float64)
    rows = [[inf, 1.0, 0.0, 2.0], [1.0, inf, inf, 0.0]]
    if name == "sparsegen_sq":
        rows.append([-inf, 1.0, 0.0, 2.0])
    v = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64)

    def gradients(z):
        z = z.clone().requires_grad_()
        p = torch.tensor(0.25, dtype=torch.float64, requires_grad=True)
        (f(z, p, algorithm=algorithm) * v).sum().backward()
        return z.grad, p.grad

    z_grad, p_grad = gradients(torch.cat([finite, torch.tensor(rows, dtype=torch.float64)]))
    expected_z_grad, expected_p_grad = gradients(finite)
    assert expected_p_grad != 0
    torch.testing.assert_close(p_grad, expected_p_grad)
    torch.testing.assert_close(z_grad[:2], expected_z_grad)
    assert torch.isfinite(z_grad[2:]).all()
    assert torch.equal(z_grad[2], torch.zeros(4, dtype=torch.float64))
    z = torch.cat([finite, torch.tensor(rows, dtype=torch.float64)])  # forward mode alike
    p = torch.tensor(0.25, dtype=torch.float64)
    _, tangent = torch.func.jvp(lambda t: f(t, p, algorithm=algorithm), (z,), (torch.ones_like(z),))
    assert torch.isfinite(tangent).all()


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


def test_half_support_counts_the_half_outputs(algorithm):
    # Integer scores put entries exactly at τ (sum-normalization++ of a row summing to 5:
    # τ = 1/5), where float32's rounding leaves some a few ulps above it; those outputs
    # round to 0 in float16, and the support must not count them. About one row in ten
    # did; the mappings computing float16 in float32 all had the flaw. Along dim 0 too.
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (2000, 17), generator=generator).half()
    mappings = [
        sg.sum_normalization_pp,
        lambda x, **kw: sg.sparsehourglass(x, q=torch.tensor(0.0), **kw),
        lambda x, **kw: sg.sparsegen(x, lambda z: z / 5, **kw),
    ]
    for mapping, (dim, scores) in itertools.product(mappings, ((-1, x), (0, x.T))):
        result = mapping(scores, dim=dim, algorithm=algorithm, return_info=True)
        assert result.output.dtype == torch.float16
        assert torch.equal(result.support_size, (result.output > 0).sum(dim))
    # the operator itself, on float16 scores divided by their largest |z|, scaled by 1/|Σz|
    scores = (x.float() / x.float().abs().amax(-1, keepdim=True).clamp_min(1)).half()
    scale = 1 / scores.float().sum(-1, keepdim=True).abs()
    if algorithm != "compiled":  # float32/float64 only
        out, _, support, _ = torch.ops.sparsegen.project(scores, scale, "given", None, algorithm)
        assert torch.equal(support, (out > 0).sum(-1))


# ----- round three: ties at τ, huge scores with a tiny scale, two answers --------------


def _at_threshold(k, n, top, lam, dtype):
    """A row whose ``n`` entries after the first sit at ``top − (1 − λ)``: exactly at τ
    after sparsegen-lin's scaling, up to the rounding of the dtype; the rest far below."""
    x = torch.full((1, k), -100.0, dtype=torch.float64)
    x[0, 0] = top
    x[0, 1 : n + 1] = top - (1 - lam)
    return x.to(dtype)


def _assert_support_and_output_in_step(x, lam, algorithm, ties):
    """The support size counts the positive outputs, ``Σ p`` has a zero gradient, and the
    output is the reference's to rounding: with ``ties`` entries at τ, each output
    there is noise of a few ulps of the scaled scores, and so is the sum."""
    leaf = x.clone().requires_grad_()
    result = sg.sparsegen_lin(leaf, lam=lam, algorithm=algorithm, return_info=True)
    out = result.output
    assert torch.equal(result.support_size, (out > 0).sum(-1)), algorithm
    eps = torch.finfo(x.dtype).eps
    noise = 8 * (ties + 2) * eps * max(1.0, x.abs().max().item() / (1 - lam))
    assert abs(out.double().sum().item() - 1) <= noise, algorithm
    # Σ_j p_j is 1 whatever z: its gradient is 0 for any support, as long as the
    # backward's support is the output's.
    out.sum().backward()
    assert leaf.grad.abs().max().item() <= eps / (1 - lam), algorithm
    expected = sparsemax_bisect(x.double().numpy() / (1 - lam))
    np.testing.assert_allclose(out.detach().double().numpy(), expected, atol=noise)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# short rows, long rows (the compiled kernel's candidates), and rows past the Triton
# kernels' on-chip length (16,384: the split path)
@pytest.mark.parametrize("k", [64, 2048, 20_000])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_entries_at_the_threshold_after_scaling(algorithm, k, dtype):
    # The audit's rows: support 1 with 21 positive entries (the compiled kernel
    # counted with one rounding and wrote with another), and at K ≥ 2048 a backward
    # that wrote 1,001 positions into a buffer of K/16 (heap corruption, a segfault).
    for lam in (0.6, 0.3, 0.9, -0.5, -4.76):
        for top in (1.0, 3.7, -2.2, 1000.1):
            for n in (20, min(1000, k - 1)):
                x = _at_threshold(k, n, top, lam, dtype)
                _assert_support_and_output_in_step(x, lam, algorithm, n)


@pytest.mark.parametrize("algorithm", ["compiled", "sort"])
def test_the_operators_refuse_arguments_shaped_for_other_slices(algorithm):
    # The kernels index the gradient, the support sizes, the scale and the mask by the
    # scores' slices, unchecked: a gradient of one row for 200,000 read past its end (a
    # segfault); a smaller mismatch returned heap garbage. Each is a ValueError naming it.
    z = torch.randn(200_000, 8, dtype=torch.float64)
    out, _, support, _ = torch.ops.sparsegen.project(z, None, "given", None, algorithm, None)
    backward = torch.ops.sparsegen.project_backward
    grad = torch.randn_like(out)
    for bad in (grad[:1], grad[:, :3], torch.randn(200_000, 10, dtype=torch.float64)):
        with pytest.raises(ValueError, match=r"grad of shape .* must have the output's shape"):
            backward(out, support, bad, None)
    for bad in (support[:1], support[:, None], support.double()):
        with pytest.raises(ValueError, match="support_size must be an integer tensor of shape"):
            backward(out, bad, grad, None)
    with pytest.raises(ValueError, match=r"scale of shape \(200000, 8\) does not broadcast"):
        backward(out, support, grad, torch.ones_like(out))
    project = torch.ops.sparsegen.project
    with pytest.raises(ValueError, match=r"scale of shape \(200000, 8\) does not broadcast"):
        project(z, torch.ones_like(z), "given", None, algorithm, None)  # one a slice, not an entry
    with pytest.raises(ValueError, match=r"mask of shape \(2, 200000, 8\) does not broadcast"):
        project(z, None, "given", None, algorithm, torch.ones((2, *z.shape), dtype=torch.bool))
    with pytest.raises(ValueError, match="a 0-d tensor has no dimension to project along"):
        project(z[0, 0], None, "given", None, algorithm, None)
    with pytest.raises(ValueError, match="a 0-d tensor has no dimension to project along"):
        backward(out[0, 0], support[0], grad[0, 0], None)
    # what broadcasts is taken: a scale of one number (float32: cast), a mask of one row
    kept = project(z, torch.ones(()), "given", None, algorithm, torch.ones(8, dtype=torch.bool))
    torch.testing.assert_close(kept[0], out)


@pytest.mark.parametrize("algorithm", ["compiled", "sort"])
@pytest.mark.parametrize("scale_from", ["cone", "hourglass"])
def test_the_operator_refuses_a_negative_or_nan_float_q(algorithm, scale_from):
    # (a q of -1 made a row of NaN: α's formula divides by Σz + Kq)
    z = torch.rand(2, 5, dtype=torch.float64) + 0.1  # inside sparsecone's domain at q = 0
    for q in (-1.0, -1e-300, math.nan):
        with pytest.raises(ValueError, match="q must be >= 0"):
            torch.ops.sparsegen.project(z, None, scale_from, q, algorithm, None)
    for q in (0.0, math.inf):
        out = torch.ops.sparsegen.project(z, None, scale_from, q, algorithm, None)[0]
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("k", [64, 4096])
def test_the_backward_counts_the_support_it_is_handed_for_itself(k):
    # A wrong support size (too small for the sparse path's buffer, or too large)
    # neither writes out of bounds nor changes the gradient.
    x = _at_threshold(k, k // 2, 1.0, 0.0, torch.float64) + torch.rand(1, k, dtype=torch.float64)
    out = sg.sparsemax(x, algorithm="compiled")
    grad = torch.randn(1, k, dtype=torch.float64)
    right = torch.ops.sparsegen.project_backward(out, (out > 0).sum(-1), grad, None)
    kept = out > 0
    expected = torch.where(kept, grad - grad[kept].mean(), 0.0)
    torch.testing.assert_close(right, expected)
    for wrong in (0, 1, k, 10**9):
        support = torch.tensor([wrong])
        torch.testing.assert_close(
            torch.ops.sparsegen.project_backward(out, support, grad, None), expected
        )
        # the torch kernel other devices run (dtypes the compiled one does not take)
        half = torch.ops.sparsegen.project_backward(out.float(), support, grad.float(), None)
        torch.testing.assert_close(half.double(), expected, atol=1e-5, rtol=0)


@settings(max_examples=int(os.environ.get("SPARSEGEN_FUZZ_EXAMPLES", 40)), deadline=None)
@given(
    lam=st.floats(-10.0, 0.95),
    top=st.floats(-1e4, 1e4),
    ties=st.integers(1, 300),
    long_row=st.booleans(),
    float32=st.booleans(),
    data=st.data(),
)
def test_fuzz_ties_at_the_threshold(lam, top, ties, long_row, float32, data):
    # SPARSEGEN_FUZZ_EXAMPLES=5000 for a longer run.
    k = data.draw(st.integers(2048, 5000) if long_row else st.integers(2, 400))
    dtype = torch.float32 if float32 else torch.float64
    ties = min(ties, k - 1)
    x = _at_threshold(k, ties, top, lam, dtype)
    for algorithm in ALGORITHMS:
        _assert_support_and_output_in_step(x, lam, algorithm, ties)


HUGE = [
    (torch.float32, 16384, 1e35, 1e-3, True),  # the audit's sparsehourglass (sum: inf)
    (torch.float32, 4096, 3e37, 1.0, True),
    (torch.float32, 4096, 3e37, 1.0, False),
    (torch.float32, 64, 3e37, 0.1, False),  # a short row
    (torch.float64, 4096, 1e305, 1.0, False),  # the audit's sparsecone (all zeros)
    (torch.float64, 16384, 1e304, 1e-3, True),
    (torch.float64, 64, 1e307, 0.1, False),
]


@pytest.mark.parametrize("dtype, k, magnitude, q, mirror", HUGE)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_huge_scores_with_a_tiny_scale_match_the_reference(
    algorithm, dtype, k, magnitude, q, mirror
):
    generator = torch.Generator().manual_seed(k)
    z = torch.rand(2, k, generator=generator, dtype=torch.float64)
    z = (2 * z - 1 if mirror else z) * magnitude
    z = z.to(dtype)
    f = sg.sparsehourglass if mirror else sg.sparsecone
    out = f(z, q=q, algorithm=algorithm)
    expected = scaled_sparsemax_reference(z.double().numpy(), q, mirror)
    atol = 2e-6 if dtype == torch.float32 else 1e-10
    np.testing.assert_allclose(out.double().numpy(), expected, atol=atol)
    leaf = z.clone().requires_grad_()
    f(leaf, q=q, algorithm=algorithm).sum().backward()  # Σ p = 1: no gradient
    assert torch.isfinite(leaf.grad).all()


@pytest.mark.parametrize("k", [64, 3000])
def test_sparsegen_sq_gives_one_answer_on_every_path(k):
    # Scores near 1000: (z/M)² − 1 formed in float32 lost the gap's precision on the
    # paths that transform then project (grad, sort, short rows), up to 3.4e-3 off.
    z = 1000 + torch.randn(8, k, generator=torch.Generator().manual_seed(k))
    lam = -20000.0  # scale 1/20001: a support of several entries
    expected = sparsemax_bisect(z.double().numpy() ** 2 / (1 - lam))
    leaf = z.clone().requires_grad_()
    outputs = {
        "compiled": sg.sparsegen_sq(z, lam=lam),
        "sort": sg.sparsegen_sq(z, lam=lam, algorithm="sort"),
        "michelot": sg.sparsegen_sq(z, lam=lam, algorithm="michelot"),
        "grad": sg.sparsegen_sq(leaf, lam=lam).detach(),
        "masked": sg.sparsegen_sq(z, lam=lam, mask=torch.ones_like(z, dtype=torch.bool)),
    }
    assert (expected > 0).sum(-1).min() >= 3
    for path, out in outputs.items():
        np.testing.assert_allclose(out.double().numpy(), expected, atol=2e-6, err_msg=path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [5, 3000])
@pytest.mark.parametrize("name", ["sparsegen_exp", "sparsegen_sq"])
def test_plus_inf_beside_scores_whose_transform_overflows(name, k, dtype, algorithm):
    # e^z and z² overflow long before z does (z > 89 in float32 for exp): beside a +inf
    # score those entries still get 0, the limit, instead of sharing the +inf's mass.
    z = torch.zeros(3, k, dtype=dtype)
    z[:, :4] = torch.tensor([1e20, inf, -3e19, 100.0], dtype=dtype)
    z[1, 2] = inf  # two winners share
    z[2, 2] = -inf  # sparsegen-sq squares -inf into +inf: a winner too, sparsegen-exp's 0
    winners = z.isinf() if name == "sparsegen_sq" else z == inf
    expected = winners / winners.sum(-1, keepdim=True)
    f = getattr(sg, name)
    leaf = z.clone().requires_grad_()
    outputs = {
        "no grad": f(z, lam=0.5, algorithm=algorithm),
        "masked": f(z, lam=0.5, algorithm=algorithm, mask=torch.ones_like(z, dtype=torch.bool)),
        "grad": f(leaf, lam=0.5, algorithm=algorithm),
    }
    for path, out in outputs.items():
        torch.testing.assert_close(out.detach(), expected.to(dtype), msg=path)
    outputs["grad"].backward(torch.randn_like(z))
    assert torch.isfinite(leaf.grad).all()


def test_sparsecone_whose_kq_overflows_only_float32_agrees_on_every_algorithm():
    # Kq = 1.6e39 overflows float32 (the torch paths took sparsemax's limit) but not
    # float64 (the kernel saw Σz + Kq = -inf, outside the domain): Kq is float64 on all.
    z = torch.tensor([[1.0, -inf, 0.5] + [0.2] * 13])
    mask = torch.isfinite(z)
    for x, m in ((z, None), (z, mask), (z.double(), None)):
        results = [sg.sparsecone(x, q=1e38, mask=m, algorithm=a) for a in ALGORITHMS]
        for other in results[1:]:
            torch.testing.assert_close(other, results[0], equal_nan=True)
    assert torch.isnan(sg.sparsecone(z, q=1e38)).all()  # a -inf score: Σz + Kq < 0
    torch.testing.assert_close(sg.sparsecone(z, q=1e38, mask=mask), sg.sparsemax(z, mask=mask))


def test_invalid_tensor_parameters_on_a_device_give_nan_slices(monkeypatch):
    # On a CUDA tensor a check would wait for the device; the slices are NaN instead. The
    # device is simulated: the rule reads on_device() only, in every module that holds it.
    checked_as_on_a_device(monkeypatch)
    x = torch.randn(3, 6, dtype=torch.float64)
    lam = torch.tensor([[0.5], [1.5], [0.2]], dtype=torch.float64)
    q = torch.tensor([[1.0], [-1.0], [inf]], dtype=torch.float64)
    cases = {
        "sparsegen_lin": (sg.sparsegen_lin(x, lam=lam), [1]),
        "sparsegen_exp": (sg.sparsegen_exp(x, lam=lam), [1]),
        "sparsehourglass": (sg.sparsehourglass(x, q=q), [1, 2]),
    }
    y = x.abs()
    y[2, 3] = -1.0
    cases["sum_normalization"] = (sg.sum_normalization(y), [2])
    for name, (out, bad) in cases.items():
        good = [r for r in range(3) if r not in bad]
        assert torch.isnan(out[bad]).all(), name
        assert not torch.isnan(out[good]).any() and torch.allclose(out[good].sum(-1), x.new_ones(1))
    torch.testing.assert_close(sg.sparsegen_lin(x, lam=lam)[0], sg.sparsegen_lin(x[0], lam=0.5))


MAPPINGS = [sg.softmax, sg.hardmax, sg.spherical_softmax, sg.sum_normalization, *SPARSE.values()]


@pytest.mark.parametrize("f", MAPPINGS)
def test_a_dim_that_is_not_an_integer_is_a_type_error(f):
    # a float dim was taken as an int by the sparse mappings, and None failed inside movedim
    x = torch.rand(3, 4, dtype=torch.float64) + 0.1
    for dim in (1.0, None, True):
        with pytest.raises(TypeError, match=f"dim must be an int; got {type(dim).__name__}"):
            f(x, dim=dim)
    for dim in (np.int64(0), torch.tensor(0)):  # integers by __index__, as torch takes them
        torch.testing.assert_close(f(x, dim=dim), f(x, dim=0))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_exp_and_sq_thresholds_are_those_of_the_scores_less_their_top(algorithm):
    # documented: τ of (g(z) − g(M))/(1 − λ), from which the output follows
    z = torch.tensor([[3.0, 2.5, 1.5, -3.1]], dtype=torch.float64)
    lam = 0.5
    for f, g, top in (
        (sg.sparsegen_exp, torch.exp, z.amax(-1)),
        (sg.sparsegen_sq, torch.square, z.abs().amax(-1)),
    ):
        info = f(z, lam=lam, return_info=True, algorithm=algorithm)
        shifted = (g(z) - g(top)[:, None]) / (1 - lam)
        expected = (shifted - info.threshold[:, None]).clamp(min=0)
        torch.testing.assert_close(info.output, expected)
        assert info.support_size.item() == (expected > 0).sum()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_threshold_of_a_degenerate_top_is_the_documented_shift(algorithm):
    # sparsegen-exp's reported τ is that of (e^z - e^M)/(1 - λ) and sparsegen-sq's of
    # (z² - M²)/(1 - λ), with M taken as 0 (exp: no finite maximum) and 1 (sq: all zeros)
    lam, k = 0.9, 4
    expected = torch.tensor([-1.0 / (1 - lam) - 1.0 / k])
    for f, z in (
        (sg.sparsegen_exp, torch.full((1, k), -inf)),
        (sg.sparsegen_sq, torch.zeros(1, k)),
    ):
        result = f(z, lam=lam, return_info=True, algorithm=algorithm)
        torch.testing.assert_close(result.output, torch.full((1, k), 1.0 / k))
        torch.testing.assert_close(result.threshold, expected)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_sum_normalization_pp_of_a_cancelling_sum_is_as_exact_as_a_tiny_q(algorithm):
    # The scores were divided by max |z| and rounded before the scale 1/|Σ| was taken:
    # Σz ≈ 4e-4 |z| multiplied each rounding (1.3e-4 off in float32); a power of two
    # leaves them exact, as the scores themselves are at q > 0
    z = torch.tensor([[2.851894, 2.852271, -5.703344]], dtype=torch.float32)
    expected = sg.sum_normalization_pp(z.double(), algorithm="sort")
    for f in (sg.sum_normalization_pp, lambda z, **kw: sg.sparsehourglass(z, q=0.0, **kw)):
        got = f(z, algorithm=algorithm)
        torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_sum_normalization_pp_at_the_ends_of_float64_agrees_on_every_path(algorithm):
    # The power of two a row is divided by: log2 of float64's largest value rounds to 1024
    # (2^1024 = inf made the row uniform on the gradient's path), and a subnormal top has no
    # exponent bits (Triton divided by the top itself, a last digit off the others)
    largest = torch.finfo(torch.float64).max
    rows = ([largest, 1e308, -5e307], [3e-320, 2.9e-320, -1.3e-320, 7e-321])
    for row in rows:
        x = torch.tensor([row], dtype=torch.float64)
        expected = sg.sum_normalization_pp(x, algorithm="sort", return_info=True)
        for requires_grad in (False, True):
            got = sg.sum_normalization_pp(
                x.clone().requires_grad_(requires_grad), algorithm=algorithm, return_info=True
            )
            torch.testing.assert_close(got.output.detach(), expected.output, rtol=0, atol=1e-15)
            torch.testing.assert_close(got.threshold, expected.threshold, rtol=0, atol=0)
    assert sg.sum_normalization_pp(torch.tensor([rows[0]], dtype=torch.float64))[0, 2] == 0


@pytest.mark.parametrize(
    ("shape", "target"),
    [
        ((2, 3), (3,)),
        ((3,), (2, 3)),
        ((1, 4), (5, 1, 1)),
        ((), (2,)),
        ((2, 1), (1, 2)),
        ((4,), (3,)),
    ],
)
def test_broadcastable_is_torch_broadcast_rule_in_either_order(shape, target):
    from sparsegen._validation import broadcastable

    try:
        torch.broadcast_shapes(shape, target)
        together = True
    except RuntimeError:
        together = False
    assert broadcastable(torch.Size(shape), torch.Size(target)) is together
    assert broadcastable(torch.Size(target), torch.Size(shape)) is together
    onto = together and torch.broadcast_shapes(shape, target) == torch.Size(target)
    assert broadcastable(torch.Size(shape), torch.Size(target), onto=True) is onto
